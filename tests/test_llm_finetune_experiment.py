"""The llm_finetune experiment's `:tiny` end to end (about 1.5 min here: slow-marked), and its bad-input errors."""

import json

import pytest

from leanjax.experiments import _launch, llm_finetune

HEADLINE = {"lora.memory_ratio", "qlora_remat.memory_ratio", "qlora_remat_8b.peak_gib", "load_peak_ratio",
            "max_logit_diff", "generate_tokens_per_s", "packing_efficiency", "peft_speed_ratio"}


@pytest.mark.slow
def test_tiny_end_to_end(tmp_path):
    assert _launch.main("llm_finetune", llm_finetune.run,
                        ["--config", "configs/llm_finetune/default.py:tiny", "--workdir", str(tmp_path)]) == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert set(summary["headline"]) == HEADLINE
    head, metrics = summary["headline"], summary["metrics"]
    assert metrics["init"] == "random"
    assert 0 < head["lora.memory_ratio"] < 1 and 0 < head["qlora_remat.memory_ratio"] < head["lora.memory_ratio"]
    assert 0 < head["packing_efficiency"] <= 1
    assert metrics["data"]["packing_efficiency"] > metrics["data"]["padded_efficiency"]
    assert head["generate_tokens_per_s"] > 0
    for key in ("load_peak_ratio", "max_logit_diff"):
        assert head[key] is None and "not measured" in metrics["not_measured"][key]
    assert head["peft_speed_ratio"] is None or head["peft_speed_ratio"] > 0


def test_weights_without_the_loader_is_a_clear_error(tmp_path, capsys):
    code = _launch.main("llm_finetune", llm_finetune.run,
                        ["--config", "configs/llm_finetune/default.py:tiny", "--workdir", str(tmp_path),
                         "--config.weights=/nonexistent"])
    assert code == 1
    assert "config.weights" in capsys.readouterr().err


@pytest.mark.parametrize("override,message", [
    ("--config.model=llama-9", "config.model='llama-9': use one of"),
    ("--config.lora_remat_policy=names:bogus", "config.lora_remat_policy"),
    ("--config.qlora_remat_micro_batches=3", "must divide"),
])
def test_bad_config_is_one_line(tmp_path, capsys, override, message):
    argv = ["--config", "configs/llm_finetune/default.py:tiny", "--workdir", str(tmp_path), override]
    assert _launch.main("llm_finetune", llm_finetune.run, argv) == 1
    assert message in capsys.readouterr().err


def test_unknown_preset_names_the_valid_ones():
    from leanjax.experiments import _llm_model

    with pytest.raises(ValueError, match="llama-3.2-1b"):
        _llm_model.preset("llama-9")
