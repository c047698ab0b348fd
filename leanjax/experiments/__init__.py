"""Experiments: one module each, run as `python -m leanjax.experiments.<name>`."""
