"""The cost-to-target pipeline: the headline and report on fake stage results (fast), the report in headless
Chromium (skipped without /usr/bin/chromium), `:tiny` end to end with a rerun that loads every stage, and a
SIGKILL in a stage followed by the same command giving the same accuracies (slow)."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from leanjax.experiments import _report

KEYS = {"target_accuracy", "brute.accuracy", "brute.steps_to_target", "brute.grid_runs", "lean.accuracy",
        "lean.steps_to_target", "serving.accuracy", "train_compute_ratio", "train_compute_ratio_oracle",
        "train_cost_ratio", "train_cost_ratio_oracle", "train_memory_ratio", "serving_size_ratio",
        "serving_cost_ratio"}
ACCURACIES = ("brute.accuracy", "brute.steps_to_target", "lean.accuracy", "lean.steps_to_target", "serving.accuracy")
CHROMIUM = "/usr/bin/chromium"
MIB = 2**20
TFLOP = 1e12


def fake_stages() -> dict:
    def brute(rate, steps, acc, reached, wall):
        return {"learning_rate": rate, "steps": steps, "accuracy": acc, "steps_to_target": reached,
                "train_flops": steps * TFLOP, "peak_bytes": 800 * MIB, "wall_s": wall,
                "eval_curve": [[20, acc - 0.05], [steps, acc]]}

    def arm(acc, mib, usd):
        return {"accuracy": acc, "weight_bytes": mib * MIB, "usd_per_1k_requests": usd, "batch_time_s": usd * 100,
                "peak_bytes": mib * MIB}

    return {
        "brute_1e-04": brute(1e-4, 60, 0.70, None, 360),
        "brute_2e-04": brute(2e-4, 40, 0.74, 40, 240),
        "brute_4e-04": brute(4e-4, 60, 0.73, 60, 360),
        "tokens": {"num_new": 256, "wall_s": 2.0},
        "tune": {"train_flops": 2 * TFLOP, "eval_flops": 1 * TFLOP, "peak_bytes": 30 * MIB, "wall_s": 30.0,
                 "best_learning_rate": 1e-3, "trials": [{}]},
        "lean": {"train_flops": 20 * TFLOP, "peak_bytes": 70 * MIB, "wall_s": 100.0, "accuracy": 0.725,
                 "steps_to_target": 50, "steps": 60, "remat": "nothing", "learning_rate": 1e-3,
                 "eval_curve": [[50, 0.725], [60, 0.73]]},
        "cache": {"cache_flops": 2 * TFLOP, "wall_s": 8.0, "examples": 2560},
        "student_L2": {"train_flops": 5 * TFLOP, "peak_bytes": 40 * MIB, "wall_s": 50.0},
        "serve": {"batch_size": 64, "wall_s": 20.0, "arms": {
            "brute_f32": arm(0.74, 86.0, 4e-4), "teacher_int8": arm(0.724, 22.0, 2e-4),
            "student_L2_int8": arm(0.70, 4.0, 5e-5)}},
    }


def test_headline_is_cost_to_target():
    headline, breakdown = _report.headline_of(fake_stages(), 0.72, usd_per_hour=0.1)
    assert set(headline) == KEYS
    assert headline["brute.accuracy"] == 0.74 and headline["brute.steps_to_target"] == 40  # the oracle: 2e-4
    assert headline["brute.grid_runs"] == 3 and breakdown["oracle_learning_rate"] == 2e-4
    lean_tflop = 2 + 1 + 20 + 2 + 5
    assert headline["train_compute_ratio"] == pytest.approx(lean_tflop / (60 + 40 + 60))  # every grid run paid
    assert headline["train_compute_ratio_oracle"] == pytest.approx(lean_tflop / 40)
    assert headline["train_cost_ratio"] == pytest.approx((2 + 30 + 100 + 8 + 50) / (360 + 240 + 360))
    assert headline["train_cost_ratio_oracle"] == pytest.approx(190 / 240)
    assert headline["train_memory_ratio"] == pytest.approx(70 / 800)
    # The student misses the target: the cheapest served model that reaches it is the int8 teacher.
    assert breakdown["served"] == "teacher_int8" and headline["serving.accuracy"] == 0.724
    assert headline["serving_size_ratio"] == pytest.approx(22 / 86) and headline["serving_cost_ratio"] == 0.5
    assert breakdown["fits"]["brute"][0] == "cpu-2core" and "tpu-v5e" in breakdown["fits"]["lean"]


def test_oracle_without_any_run_at_target_is_the_most_accurate():
    grid = {k: v for k, v in fake_stages().items() if k.startswith("brute_")}
    for run in grid.values():
        run["steps_to_target"] = None
    assert _report.oracle(grid)["learning_rate"] == 2e-4
    assert _report.served_choice({"a": {"accuracy": 0.5, "usd_per_1k_requests": 1.0},
                                  "b": {"accuracy": 0.6, "usd_per_1k_requests": 2.0}}, 0.9) == "b"


def test_skipped_students_cost_nothing_and_are_named_in_the_report(tmp_path):
    stages = fake_stages()
    skipped = "skipped: teacher +0.5 points over the target, students need +5.0"
    stages["cache"] = {"skipped": skipped, "wall_s": 0.01}
    stages["student_L2"] = {"skipped": skipped, "layers": 2, "wall_s": 0.01}
    del stages["serve"]["arms"]["student_L2_int8"]
    headline, breakdown = _report.headline_of(stages, 0.72, usd_per_hour=0.1)
    assert breakdown["lean_flops"]["cache"] == 0 and breakdown["lean_flops"]["student_L2"] == 0
    assert headline["train_compute_ratio_oracle"] == pytest.approx((2 + 1 + 20) / 40)
    assert headline["train_memory_ratio"] == pytest.approx(70 / 800)  # the largest lean step left: QLoRA's
    paths = _report.write(str(tmp_path), stages, headline, breakdown)
    with open(paths["md"]) as f:
        assert f"| student_L2 | 0 | 0 | - | {skipped} |" in f.read()


def test_students_train_only_with_a_teacher_margin_over_the_target():
    from types import SimpleNamespace

    from leanjax.experiments._pipeline import students_skipped

    def ctx(accuracy, margin):
        c = SimpleNamespace(target_accuracy=0.72, distill=SimpleNamespace(min_teacher_margin=margin))
        return SimpleNamespace(c=c, results={"lean": {"accuracy": accuracy}})

    assert students_skipped(ctx(0.78, 0.05)) is None
    assert students_skipped(ctx(0.7285, 0.05)) == "skipped: teacher +0.9 points over the target, students need +5.0"
    assert students_skipped(ctx(0.60, -1.0)) is None  # a negative margin: always trained (`:tiny`)


def test_served_choice_takes_the_smallest_of_the_near_cheapest():
    arms = {"int8": {"accuracy": 0.73, "usd_per_1k_requests": 1.00, "weight_bytes": 22},
            "int8_cut": {"accuracy": 0.725, "usd_per_1k_requests": 1.08, "weight_bytes": 12},  # within 10%: smaller
            "tiny": {"accuracy": 0.70, "usd_per_1k_requests": 0.5, "weight_bytes": 4},  # misses the target
            "slow": {"accuracy": 0.74, "usd_per_1k_requests": 1.2, "weight_bytes": 1}}
    assert _report.served_choice(arms, 0.72) == "int8_cut"
    assert _report.served_choice(arms, 0.72, tolerance=0.0) == "int8"


def render(workdir):
    stages = fake_stages()
    headline, breakdown = _report.headline_of(stages, 0.72, 0.1)
    return headline, _report.write(str(workdir), stages, headline, breakdown)


def test_report_renders_tables_and_figures(tmp_path):
    _, paths = render(tmp_path)
    with open(paths["md"]) as f:
        md = f.read()
    for section in ("Headline", "Brute-force grid", "Lean stages", "Serving at the target",
                    "Devices that fit the largest train step"):
        assert f"## {section}" in md
    assert "| `train_memory_ratio` | 0.0875 | <= 0.10: met |" in md
    assert "| `serving_size_ratio` | 0.2558 | <= 0.05: missed |" in md
    assert "teacher_int8 (chosen)" in md
    for name in _report.FIGURES:
        assert os.path.getsize(os.path.join(paths["figures"], f"{name}.png")) > 1000
    with open(paths["html"]) as f:
        page = f.read()
    assert page.count("data:image/png;base64,") == len(_report.FIGURES) and "src=\"http" not in page


@pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="Debian's chromium is not installed")
def test_report_figures_show_in_headless_chromium(tmp_path):
    _, paths = render(tmp_path)
    profile = tmp_path / "profile"
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={profile}",
           "--virtual-time-budget=10000", "--dump-dom", f"file://{paths['html']}"]
    dom = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False).stdout
    n = len(_report.FIGURES)
    assert f'data-figures-loaded="{n}/{n}"' in dom, dom[-2000:]
    shutil.rmtree(profile, ignore_errors=True)


def _tiny(workdir, **popen):
    cmd = [sys.executable, "-m", "leanjax.experiments.pipeline", "--config", "configs/pipeline/default.py:tiny",
           "--workdir", str(workdir)]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONPATH": os.getcwd()}, **popen)


def _headline(workdir) -> dict:
    return json.loads((workdir / "summary.json").read_text())["headline"]


@pytest.mark.slow
@pytest.mark.parametrize("kill_in", ["lean", "student_L1"])
def test_tiny_sigkill_in_a_stage_then_same_command_gives_same_accuracies(tmp_path, kill_in):
    clean, killed = tmp_path / "clean", tmp_path / "killed"
    _tiny(clean).communicate(timeout=600)
    reference = _headline(clean)
    assert set(reference) == KEYS and all(v is not None for v in reference.values())
    proc = _tiny(killed)
    for line in proc.stdout:  # SIGKILL as soon as the stage has started
        if f" {kill_in}: " in line and "done" not in line:
            time.sleep(3)
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert not (killed / "stages" / f"{kill_in}.json").exists()
    rerun = _tiny(killed).communicate(timeout=600)[0]
    assert "done earlier" in rerun and "resumed from checkpoint" not in rerun, rerun[-3000:]
    again = _headline(killed)
    assert {k: again[k] for k in ACCURACIES} == {k: reference[k] for k in ACCURACIES}
    # Everything finished: a third run only loads the stages (no training) and writes the same headline.
    t0 = time.perf_counter()
    third = _tiny(killed).communicate(timeout=600)[0]
    assert third.count("done earlier") == 8 and time.perf_counter() - t0 < 120
    assert _headline(killed) == again
