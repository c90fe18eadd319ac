"""The decode worker: imports prompts' KV from prefill and generates tokens (see server.py)."""
