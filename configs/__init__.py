"""Experiment configs: `<name>/default.py` defines `get_config(arg)`; `common.py` holds their shared parts."""
