"""`--audit` on every experiment's `:tiny` config, through the launcher: the experiment's train and serving
steps are compiled and costed (nothing is trained) and `summary.audit.json` holds the audit headline."""

import importlib
import json
import math
import pkgutil
from pathlib import Path

import pytest

import leanjax.experiments
from leanjax.experiments import _launch

ROOT = Path(__file__).resolve().parents[1]
# Every `leanjax.experiments.<name>` module with a `configs/<name>/default.py`.
EXPERIMENTS = sorted(m.name for m in pkgutil.iter_modules(leanjax.experiments.__path__)
                     if not m.name.startswith("_") and (ROOT / "configs" / m.name / "default.py").is_file())
# Audited in the default suite (~15-40 s each on 2 loaded cores); the rest (up to minutes each: MiniLM
# loads, several serving arms) are marked slow.
FAST = {"baseline"}


def test_every_experiment_has_a_build():
    assert {"baseline", "prune", "parallel"} <= set(EXPERIMENTS)
    missing = [n for n in EXPERIMENTS if not callable(getattr(importlib.import_module(f"leanjax.experiments.{n}"),
                                                              "build", None))]
    assert not missing, f"no build(config) for --audit in: {missing}"


@pytest.mark.parametrize("name", [n if n in FAST else pytest.param(n, marks=pytest.mark.slow) for n in EXPERIMENTS])
def test_audit_writes_the_audit_headline(name, tmp_path):
    module = importlib.import_module(f"leanjax.experiments.{name}")
    argv = ["--audit", "--config", f"configs/{name}/default.py:tiny", "--workdir", str(tmp_path)]
    assert _launch.main(name, module.run, argv) == 0
    assert not (tmp_path / "summary.json").exists()  # an audit leaves the run's own summary alone
    headline = json.loads((tmp_path / "summary.audit.json").read_text())["headline"]
    for step in ("train", "serve"):
        assert headline[f"audit.{step}.flops"] > 0 and headline[f"audit.{step}.peak_bytes"] > 0
    assert headline["audit.train.step_time_s"] > 0
    assert math.isfinite(headline["audit.serve.usd_per_1k_requests"])
    # Every what-if row is an audit or a reason about the model, never about a config key.
    whatif = json.loads((tmp_path / "summary.audit.json").read_text())["metrics"]["whatif"]
    rows = whatif["train"][1:] + whatif["serve"][1:]
    assert len(rows) == headline["audit.whatif.rows"] >= 10
    for row in rows:
        assert (row["audit"] is None) != (row["unavailable"] is None), row["name"]
        assert row["unavailable"] is None or "config" not in row["unavailable"], row
        # A row that raised is reported as `failed: ...` by the audit; none may here.
        assert not (row["unavailable"] or "").startswith("failed"), row
        assert row["audit"] is None or row["cheapest_fit"] is not None, row["name"]
    if name == "baseline":  # the MNIST CNN: all but the three remat rows and the student (no layer stack)
        assert headline["audit.whatif.available"] == headline["audit.whatif.rows"] - 4
