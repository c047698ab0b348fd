"""The lean pipeline: the report renderer on fake stage results (fast), the report in headless Chromium
(skipped without /usr/bin/chromium), and the `:tiny` run end to end (slow), resumed without rework."""

import json
import os
import re
import shutil
import subprocess
import time

import pytest

from leanjax.experiments import _report

KEYS = {"brute.accuracy", "lean.accuracy", "serving.accuracy", "train_memory_ratio", "scratch.accuracy",
        "train_compute_ratio", "train_cost_ratio", "serving_size_ratio", "serving_cost_ratio"}
CHROMIUM = "/usr/bin/chromium"
MIB = 2**20


def fake_stages() -> dict:
    """The keys `headline_of` and the report read, with plausible values."""
    train = lambda peak, flops, steps, acc, wall: dict(  # noqa: E731
        peak_bytes=peak, flops_per_step=flops, steps=steps, train_flops=flops * steps, accuracy=acc,
        wall_s=wall, usd=wall * 0.1 / 3600, usd_per_hour=0.1)
    brute = {**train(800 * MIB, 1e11, 60, 0.74, 400), "params": 22_700_000, "weight_bytes": 91 * MIB}
    return {
        "brute": brute,
        "scratch": train(800 * MIB, 1e11, 60, 0.62, 380),
        "tokens": {"num_new": 256, "examples": ["@united", "#fail", "jetblue"], "wall_s": 2.0, "usd": 5e-5,
                   "mean_tokens": {"base": 32.0, "extended": 28.1},
                   "coverage": {"brute_seq_len": 48, "lean_seq_len": 40, "base_at_brute_seq": 0.92,
                                "base_at_lean_seq": 0.79, "extended_at_lean_seq": 0.88}},
        "tune": {**train(40 * MIB, 3e10, 90, None, 120), "eval_flops": 5e11, "score_flops": 6e11,
                 "best_learning_rate": 1e-3, "best_val_accuracy": 0.7, "n_trials": 6, "pruned": 3,
                 "proxy_layers": 2, "full_budget_steps": 180},
        "lean": {**train(150 * MIB, 9e10, 40, 0.73, 300), "remat": "nothing", "select": "hardest 50% by EL2N",
                 "train_examples": 2048, "pool_examples": 4096, "trainable_params": 120_000,
                 "weight_bytes": 14 * MIB},
        "distill": {**train(60 * MIB, 1e10, 60, 0.72, 100), "cache_flops": 2e12, "student_layers": 2,
                    "student_vocab": 2048, "cache_examples": 4096, "params": 4_300_000},
        "serve": {"accuracy": 0.72, "batch_size": 64, "student_f32_bytes": 17 * MIB, "wall_s": 20.0,
                  "arms": {"brute": {"weight_bytes": 91 * MIB, "usd_per_1k_requests": 2e-5},
                           "student_int8": {"weight_bytes": 4.4 * MIB, "usd_per_1k_requests": 3e-6}}},
    }


def render(workdir):
    from leanjax.experiments.pipeline import headline_of

    stages = fake_stages()
    headline, breakdown = headline_of(stages)
    return headline, _report.write(str(workdir), stages, headline, breakdown)


def test_report_renders_every_figure(tmp_path):
    headline, paths = render(tmp_path)
    assert set(headline) == KEYS
    assert headline["train_memory_ratio"] == pytest.approx(150 / 800)
    assert headline["serving_size_ratio"] == pytest.approx(4.4 / 91)
    page = open(paths["html"]).read()
    images = re.findall(r'<img id="fig-(\w+)"[^>]*src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert [name for name, _ in images] == list(_report.FIGURES)
    assert all(len(data) > 1000 for _, data in images)  # real PNGs, not empty placeholders
    assert "src=\"http" not in page and "<link" not in page  # self-contained
    md = open(paths["md"]).read()
    for section in ("Cost drivers before / after", "Which stage saved what", "Brute-force references"):
        assert f"## {section}" in md
    for name in _report.FIGURES:
        assert f"report_figures/{name}.png" in md
        assert os.path.getsize(os.path.join(paths["figures"], f"{name}.png")) > 1000


@pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="Debian's chromium is not installed")
def test_report_figures_show_in_headless_chromium(tmp_path):
    _, paths = render(tmp_path)
    profile = tmp_path / "profile"
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={profile}",
           "--virtual-time-budget=10000", "--dump-dom", f"file://{paths['html']}"]
    dom = subprocess.run(cmd, capture_output=True, text=True, timeout=120).stdout
    n = len(_report.FIGURES)
    # The page's own script counts the images that decoded (naturalWidth > 0) once loaded.
    assert f'data-figures-loaded="{n}/{n}"' in dom, dom[-2000:]
    shot = tmp_path / "shot.png"
    subprocess.run(cmd[:-2] + [f"--screenshot={shot}", "--window-size=1200,3000", f"file://{paths['html']}"],
                   capture_output=True, timeout=120)
    assert shot.exists() and shot.stat().st_size > 10_000
    shutil.rmtree(profile, ignore_errors=True)


@pytest.mark.slow
def test_pipeline_tiny_end_to_end_and_resume(tmp_path):
    from leanjax.experiments import _launch
    from leanjax.experiments.pipeline import STAGES, run

    argv = ["--config", "configs/pipeline/default.py:tiny", "--workdir", str(tmp_path)]
    assert _launch.main("pipeline", run, argv) == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert set(summary["headline"]) == KEYS
    assert all(v is not None for v in summary["headline"].values())
    for name, _, _ in STAGES:
        assert (tmp_path / "stages" / f"{name}.json").exists()
    page = (tmp_path / "report.html").read_text()
    assert page.count("data:image/png;base64,") == len(_report.FIGURES)
    assert (tmp_path / "report.md").exists()
    # Resumable: a rerun finds every stage done and only re-renders the report.
    t0 = time.perf_counter()
    assert _launch.main("pipeline", run, argv) == 0
    assert time.perf_counter() - t0 < 120  # no training, no compiling: the report only
    again = json.loads((tmp_path / "summary.json").read_text())["headline"]
    assert again == summary["headline"]
