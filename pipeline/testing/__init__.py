"""Tiny random-init stand-ins for downloaded checkpoints, written to disk for the tests and the demo (not runtime code:
the only package in `pipeline` that may import `data_prep`, whose synthetic questions the tiny LLM is pretrained on)."""
