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
    assert head["load_peak_ratio"] > 0 and metrics["load_peak"]["nf4_on_load"]["load_peak_ratio"] > 0
    assert not (tmp_path / "load_peak_checkpoint").exists()
    assert 0 <= head["max_logit_diff"] < 1e-4 and len(metrics["logit_diff_vs_transformers"]) == 6
    assert head["peft_speed_ratio"] is None or head["peft_speed_ratio"] > 0


def test_bad_weights_are_clear_errors(tmp_path, capsys):
    def run(weights):
        return _launch.main("llm_finetune", llm_finetune.run,
                            ["--config", "configs/llm_finetune/default.py:tiny", "--workdir", str(tmp_path),
                             f"--config.weights={weights}"])

    assert run("/nonexistent") == 1
    assert "config.weights='/nonexistent'" in capsys.readouterr().err
    # A real checkpoint whose vocabulary is smaller than the tokenizer's would gather out of range.
    assert run("tests/fixtures/decoders/qwen3") == 1
    assert "128-token vocabulary but the tokenizer" in capsys.readouterr().err


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
