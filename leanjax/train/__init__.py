"""The canonical training loop and what it writes: checkpoints, metric logs, plots, summary.json."""

from leanjax.train.arm_steps import StepsPerArm, train_with_curve
from leanjax.train.checkpoint import Checkpointer, IncompatibleCheckpointError
from leanjax.train.curves import compare_to_baseline, steps_to_target
from leanjax.train.loop import FitResult, NonFiniteLossError, fit
from leanjax.train.plots import plot_arm_curves, plot_bars, plot_curves
from leanjax.train.summary import write_summary
from leanjax.train.writers import MetricWriter, read_jsonl

__all__ = ["Checkpointer", "FitResult", "IncompatibleCheckpointError", "MetricWriter", "NonFiniteLossError",
           "compare_to_baseline", "fit", "plot_arm_curves", "plot_bars", "plot_curves", "read_jsonl", "steps_to_target",
           "write_summary", "StepsPerArm", "train_with_curve"]
