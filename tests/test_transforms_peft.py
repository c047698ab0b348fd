"""HF PEFT adapters in and out through a model's KeyMap: against outputs PEFT computed
(tests/fixtures/peft_tiny_bert, made by scripts/make_peft_reference.py; no torch here)."""

import pathlib

import jax
import numpy as np
import pytest
from safetensors.numpy import load_file

import leanjax.transforms as T
from leanjax.models.functional import functional
from leanjax.weights import BERT, load_pretrained

FIXTURE = pathlib.Path(__file__).parent / "fixtures" / "peft_tiny_bert"


def _base(scan_layers=False):
    pre = load_pretrained(FIXTURE / "base", scan_layers=scan_layers)
    apply_fn, params = functional(pre.model)
    ref = np.load(FIXTURE / "reference.npz")
    run = jax.jit(T.apply(lambda p: apply_fn(p, ref["input_ids"], ref["attention_mask"])))
    return params, run, ref


def _valid(x, ref):
    return np.asarray(x)[ref["attention_mask"] == 1]  # PEFT's padded positions are not compared


@pytest.mark.parametrize("adapter,scan_layers", [("lora", False), ("dora", True)])
def test_load_peft_matches_peft_outputs(adapter, scan_layers):
    params, run, ref = _base(scan_layers)
    np.testing.assert_allclose(_valid(run(params), ref), _valid(ref["base"], ref), atol=2e-5)
    adapted = T.load_peft(str(FIXTURE / adapter), params, key_map=BERT)
    lora = [p for p, x in T.leaves_with_paths(adapted) if isinstance(x, T.LoRA)]
    assert len(lora) == (5 if scan_layers else 10)  # query, value and 3 dense per layer
    assert all((x.magnitude is not None) == (adapter == "dora") for _, x in T.leaves_with_paths(adapted)
               if isinstance(x, T.LoRA))
    out = run(adapted)
    assert np.abs(_valid(out, ref) - _valid(ref["base"], ref)).max() > 1e-2  # the adapter does something
    np.testing.assert_allclose(_valid(out, ref), _valid(ref[adapter], ref), atol=2e-5)


def test_export_peft_names_modules_from_the_key_map(tmp_path):
    """Export with key_map= only (no module_name), from stacked layers: the same tensors as PEFT's own
    file, and they load back."""
    params, run, ref = _base(scan_layers=True)
    adapted = T.load_peft(str(FIXTURE / "dora"), params, key_map=BERT)
    written = T.export_peft(adapted, str(tmp_path), key_map=BERT)
    theirs = load_file(FIXTURE / "dora" / "adapter_model.safetensors")
    assert sorted(written) == sorted(theirs)
    for name, tensor in theirs.items():
        np.testing.assert_array_equal(written[name], tensor, err_msg=name)
    again = T.load_peft(str(tmp_path), params, key_map=BERT)
    np.testing.assert_array_equal(run(again), run(adapted))


def test_load_peft_errors_name_the_module(tmp_path):
    params, _, _ = _base()
    only_layer0 = {k: v for k, v in load_file(FIXTURE / "lora" / "adapter_model.safetensors").items()}
    only_layer0["base_model.model.encoder.layer.0.attention.self.nothing.lora_A.weight"] = np.zeros((4, 16))
    only_layer0["base_model.model.encoder.layer.0.attention.self.nothing.lora_B.weight"] = np.zeros((16, 4))
    from safetensors.numpy import save_file
    save_file(only_layer0, str(tmp_path / "adapter_model.safetensors"))
    (tmp_path / "adapter_config.json").write_text((FIXTURE / "lora" / "adapter_config.json").read_text())
    with pytest.raises(ValueError, match=r"attention\.self\.nothing"):
        T.load_peft(str(tmp_path), params, key_map=BERT)
    (tmp_path / "adapter_model.safetensors").unlink()
    (tmp_path / "adapter_model.bin").write_bytes(b"\x80\x02}q\x00.")
    with pytest.raises(ValueError, match="pickle"):
        T.load_peft(str(tmp_path), params, key_map=BERT)
