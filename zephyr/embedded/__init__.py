"""The embedded default: a tiny model, tokenizer and datasets built locally, so every stage runs offline."""
