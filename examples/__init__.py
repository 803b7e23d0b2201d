"""Runnable examples: ``streams worker examples.<name>:app`` (see ``examples/README.md``)."""
