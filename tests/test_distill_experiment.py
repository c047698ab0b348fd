"""End to end: `distill:tiny` (1-layer MiniLM teacher, 1-layer 512-token student) writes every headline key."""

import json

import pytest

from leanjax.experiments import _launch
from leanjax.experiments.distill import run

KEYS = {"teacher_accuracy", "student_accuracy", "label_only_accuracy", "retention", "student_params_ratio",
        "student_throughput_ratio", "int8_teacher.student_accuracy", "offline.student_accuracy"}


@pytest.mark.slow
def test_distill_tiny(tmp_path):
    code = _launch.main("distill", run, ["--config", "configs/distill/default.py:tiny", "--workdir", str(tmp_path)])
    assert code == 0
    headline = json.loads((tmp_path / "summary.json").read_text())["headline"]
    assert set(headline) == KEYS
    assert headline["student_params_ratio"] < 1
