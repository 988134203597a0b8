"""The Zephyr chat format, as a Jinja template with `{% generation %}` markers.

Rendered text (same as Zephyr-7B's):  <s><|system|>\\n...</s>\\n<|user|>\\n...</s>\\n<|assistant|>\\n...</s>
Differences from the original template, each on purpose:
- it emits the BOS token itself (TRL tokenizes chat templates with add_special_tokens=False, so nothing else
  adds it: exactly one BOS);
- the newline that separates turns is written *before* the next role tag instead of after EOS, so a
  completion ends exactly on EOS (its last trained token) and the prompt+completion rendering starts with the
  prompt rendering (no boundary drift between chosen and rejected);
- the assistant's content and its EOS sit inside {% generation %} so `assistant_only_loss` trains on both.
"""

ZEPHYR_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if not loop.first %}{{ '\\n' }}{% endif %}"
    "{% if message['role'] == 'assistant' %}"
    "{{ '<|assistant|>\\n' }}{% generation %}{{ message['content'] + eos_token }}{% endgeneration %}"
    "{% elif message['role'] in ['system', 'user'] %}"
    "{{ '<|' + message['role'] + '|>\\n' + message['content'] + eos_token }}"
    "{% else %}{{ raise_exception('Unknown role: ' + message['role']) }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}"
    "{% if messages %}{{ '\\n' }}{% endif %}{{ '<|assistant|>\\n' }}"
    "{% endif %}"
)
