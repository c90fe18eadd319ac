"""The prefill worker: runs prompts on the language model, hands the KV to decode (see server.py)."""
