"""The canonical training loop and what it writes: checkpoints, metric logs, plots, summary.json."""

from leanjax.train.checkpoint import Checkpointer, IncompatibleCheckpointError
from leanjax.train.loop import FitResult, NonFiniteLossError, fit
from leanjax.train.plots import plot_curves
from leanjax.train.summary import write_summary
from leanjax.train.writers import MetricWriter, read_jsonl

__all__ = ["Checkpointer", "FitResult", "IncompatibleCheckpointError", "MetricWriter",
           "NonFiniteLossError", "fit", "plot_curves", "read_jsonl", "write_summary"]
