"""The finetune experiment: `:tiny` end to end (MiniLM's first layer vs scratch), in process."""

import json

from leanjax.experiments import _launch, finetune

HEADLINE = {"finetuned_accuracy", "scratch_accuracy", "steps_to_match_scratch", "speedup", "compute_saved",
            "fast_start.finetuned_accuracy", "fast_start.scratch_accuracy", "fast_start.scratch_learning_rate",
            "fast_start.steps_to_match_scratch", "fast_start.speedup"}


def test_steps_to_match_is_the_first_eval_at_or_above_the_target():
    from leanjax.train import steps_to_target  # what finetune's steps_to_match_scratch is

    curve = [(10, 0.4), (20, 0.55), (30, 0.5), (40, 0.6)]
    assert steps_to_target(curve, 0.55) == 20
    assert steps_to_target(curve, 0.3) == 10
    assert steps_to_target(curve, 0.7) is None


# In `make test`: the `:tiny` contract (every headline key) at ~30-35 s on 2 quiet cores (-O0).
def test_tiny_writes_every_headline_key(tmp_path):
    code = _launch.main("finetune", finetune.run,
                        ["--config", "configs/finetune/default.py:tiny", "--workdir", str(tmp_path)])
    assert code == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert set(summary["headline"]) == HEADLINE
    metrics = summary["metrics"]
    assert [s for s, _ in metrics["eval_curves"]["finetuned"]] == [4, 8]
    assert metrics["eval_curves"]["scratch"][-1][1] == summary["headline"]["scratch_accuracy"]
    assert (tmp_path / "learning_curves.png").stat().st_size > 1000
    # The fast-start arm trained its own run; scratch at 2e-4 (the tiny's only rate) reuses the main one.
    head = summary["headline"]
    assert head["fast_start.scratch_learning_rate"] == 2e-4
    assert head["fast_start.scratch_accuracy"] == head["scratch_accuracy"]
    assert [s for s, _ in metrics["fast_start"]["eval_curves"]["finetuned"]] == [4, 8]
    assert (tmp_path / "fast_start" / "finetuned").is_dir()
