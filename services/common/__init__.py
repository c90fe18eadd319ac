"""Pieces the language-model services (prefill, decode) share: flags, engine setup, launching."""
