"""End to end: `distill:tiny` (1-layer MiniLM teacher, 1-layer 512-token student) writes every headline key."""

import json

import pytest

from leanjax.experiments import _launch
from leanjax.experiments.distill import run

KEYS = {"teacher_accuracy", "student_accuracy", "label_only_accuracy", "retention", "student_params_ratio",
        "student_throughput_ratio", "int8_teacher.student_accuracy", "offline.student_accuracy",
        "few_labels.label_only_accuracy", "few_labels.student_accuracy", "few_labels.gain", "few_labels.retention"}


@pytest.mark.slow
def test_distill_tiny(tmp_path):
    code = _launch.main("distill", run, ["--config", "configs/distill/default.py:tiny", "--workdir", str(tmp_path)])
    assert code == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    headline = summary["headline"]
    assert set(headline) == KEYS
    few = summary["metrics"]["few_labels_sweep"]
    assert few["labels"] == 16 and few["pool"] == 64 and set(few["accuracy"]) == {"T2_a1"}
    assert headline["few_labels.gain"] == pytest.approx(
        100 * (headline["few_labels.student_accuracy"] - headline["few_labels.label_only_accuracy"]))
    assert headline["student_params_ratio"] < 1
