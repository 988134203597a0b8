"""The inference layer shared by AIF and evaluation: how to reach a model (settings), generation backends
(transformers, vLLM, OpenAI-compatible servers), crash-safe record stores, and callable judges."""
