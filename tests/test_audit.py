"""Tests of leanjax.audit: loop-corrected FLOPs, memory, collectives, peaks, MFU, prices, what-ifs."""

import gzip
import importlib.resources
import json
import re
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

from leanjax import audit as la
from leanjax.audit import hlo

WIDTH, LAYERS, BATCH = 32, 4, 8
# Written on an H200 by `python -m leanjax.audit.selfcheck --dump DIR` (jax 0.11.2).
H200 = Path(__file__).parent / "fixtures" / "audit" / "h200"


def _layers():
    keys = jax.random.split(jax.random.key(0), LAYERS)
    return jnp.stack([jax.random.normal(k, (WIDTH, WIDTH)) / WIDTH**0.5 for k in keys])


def _scanned_loss(ws, x):
    def block(h, w):
        return jax.nn.gelu(h @ w), None

    h, _ = jax.lax.scan(block, x, ws)
    return jnp.mean(h**2)


def _unrolled_loss(ws, x):
    # A list of weights: slicing one stacked array would add the scatter of its gradient.
    for w in ws:
        x = jax.nn.gelu(x @ w)
    return jnp.mean(x**2)


def _xla_flops(fn, *args):
    return jax.jit(fn).lower(*args).compile().cost_analysis()["flops"]


@pytest.mark.parametrize("train", [False, True])
def test_trip_count_correction_equals_unrolled_count(train):
    ws, x = _layers(), jnp.ones((BATCH, WIDTH))
    # Gradients with respect to both arguments, so the unrolled program cannot drop the input
    # gradient that the scanned body computes on every iteration.
    wrap = (lambda f: jax.grad(f, argnums=(0, 1))) if train else (lambda f: f)
    audit = la.audit_compiled(wrap(_scanned_loss), ws, x, iters=0)
    unrolled = _xla_flops(wrap(_unrolled_loss), list(ws), x)

    assert audit.flops_xla < 0.5 * unrolled  # XLA alone counts one of the LAYERS bodies
    assert audit.flops == pytest.approx(unrolled, rel=0.01)
    assert [loop.trip_count for loop in audit.hlo.loops] == [LAYERS] * (2 if train else 1)
    assert all(loop.trip_source == "known_trip_count" for loop in audit.hlo.loops)
    assert "while loop" in audit.flops_method


def test_nested_loops_multiply_trip_counts():
    ws = _layers().reshape(2, LAYERS // 2, WIDTH, WIDTH)

    def nested(ws, x):
        def outer(h, group):
            return jax.lax.scan(lambda c, w: (jax.nn.gelu(c @ w), None), h, group)[0], None

        return jnp.mean(jax.lax.scan(outer, x, ws)[0] ** 2)

    x = jnp.ones((BATCH, WIDTH))
    audit = la.audit_compiled(nested, ws, x, iters=0)
    assert sorted((loop.depth, loop.trip_count) for loop in audit.hlo.loops) == [(0, 2), (1, LAYERS // 2)]
    assert audit.flops == pytest.approx(_xla_flops(_unrolled_loss, list(_layers()), x), rel=0.01)


def test_trip_count_read_from_the_loop_condition():
    text = jax.jit(_scanned_loss).lower(_layers(), jnp.ones((BATCH, WIDTH))).compile().as_text()
    stripped = re.sub(r'"known_trip_count":\{"n":"\d+"\},?', "", text)
    assert "known_trip_count" not in stripped
    (loop,) = hlo.analyze(stripped).loops
    assert (loop.trip_count, loop.trip_source) == (LAYERS, "condition")


def test_hlo_counter_reproduces_xla_cost_analysis_without_loops():
    def conv_net(x, k1, k2):
        dn = ("NHWC", "HWIO", "NHWC")
        y = jax.nn.relu(jax.lax.conv_general_dilated(x, k1, (2, 2), "SAME", dimension_numbers=dn))
        y = jax.lax.conv_general_dilated(y, k2, (1, 1), ((1, 0), (0, 2)), rhs_dilation=(2, 1),
                                         dimension_numbers=dn, feature_group_count=2)
        return jnp.sum(jnp.tanh(y))

    def attention(q, k, v):
        p = jax.nn.softmax(jnp.einsum("bqd,bkd->bqk", q, k), axis=-1)
        return jnp.sum(jnp.einsum("bqk,bkd->bqd", p, v))

    cases = [
        (jax.grad(conv_net, argnums=(0, 1, 2)),
         (jnp.ones((2, 9, 9, 3)), jnp.ones((3, 3, 3, 4)), jnp.ones((3, 2, 2, 4)))),
        (jax.grad(attention, argnums=(0, 1, 2)), tuple(jnp.ones((2, 16, 8)) for _ in range(3))),
        (jax.grad(_unrolled_loss, argnums=(0, 1)), (list(_layers()), jnp.ones((BATCH, WIDTH)))),
    ]
    for fn, args in cases:
        compiled = jax.jit(fn).lower(*args).compile()
        cost = compiled.cost_analysis()
        ours = hlo.analyze(compiled.as_text())
        assert ours.flops_once == cost["flops"]
        assert ours.transcendentals_once == cost["transcendentals"]
        assert ours.bytes_once == cost["bytes accessed"]
        assert ours.flops == ours.flops_once  # no loops: nothing to expand


def test_counter_on_gpu_hlo_adds_the_cublas_matmuls_xla_leaves_out():
    report = json.loads((H200 / "selfcheck_report.json").read_text())
    counts = {}
    for build in ("scanned", "unrolled"):
        with gzip.open(H200 / f"selfcheck_{build}.hlo.txt.gz", "rt") as f:
            analysis = hlo.analyze(f.read())
        xla = json.loads((H200 / f"selfcheck_{build}.cost.json").read_text())
        # XLA's GPU cost_analysis counts cuBLAS calls as zero; everything else matches it.
        assert analysis.flops_once - analysis.library_flops_once == pytest.approx(xla["flops"], rel=1e-6)
        assert analysis.library_flops_once > 0.3 * analysis.flops_once
        assert analysis.matmul_dtype == "bfloat16"
        counts[build] = analysis
    scanned, unrolled = counts["scanned"], counts["unrolled"]
    assert [loop.trip_count for loop in scanned.loops] == [8, 8]
    assert scanned.custom_calls == {"__cublas$lt$matmul": 7}
    assert scanned.flops == pytest.approx(unrolled.flops, rel=1e-3)
    assert unrolled.flops == pytest.approx(report["model_flops"], rel=0.01)


def test_memory_report_equals_memory_analysis():
    ws, x = _layers(), jnp.ones((BATCH, WIDTH))

    def sgd(ws, x):
        return ws - 0.1 * jax.grad(_scanned_loss)(ws, x)

    audit = la.audit_compiled(sgd, ws, x, donate_argnums=0, iters=0)
    compiled = jax.jit(sgd, donate_argnums=0).lower(ws, x).compile()
    expected = compiled.memory_analysis()
    assert la.audit_compiled(compiled, iters=0).memory == audit.memory  # a Compiled is audited as is
    m = audit.memory
    assert (m.arguments, m.outputs, m.temporaries, m.aliased, m.generated_code) == (
        expected.argument_size_in_bytes, expected.output_size_in_bytes, expected.temp_size_in_bytes,
        expected.alias_size_in_bytes, expected.generated_code_size_in_bytes,
    )
    assert m.aliased == ws.nbytes  # the donated weights are updated in place
    assert m.peak == m.arguments + m.outputs + m.temporaries - m.aliased


def test_collectives_are_counted_once_per_loop_iteration():
    mesh = jax.make_mesh((8,), ("model",), axis_types=(AxisType.Explicit,))
    ws = jax.device_put(jnp.ones((3, 64, 64)), NamedSharding(mesh, P(None, "model", None)))
    x = jax.device_put(jnp.ones((4, 64)), NamedSharding(mesh, P(None, "model")))

    # Row-parallel layers: each device multiplies its slice of the features, then an all-reduce.
    @jax.shard_map(mesh=mesh, in_specs=(P(None, "model", None), P(None, "model")), out_specs=P(None, "model"))
    def layers(ws, x):
        def block(h, w):
            y = jax.lax.psum(h @ w, "model")  # f32[4, 64] on every device
            return jax.lax.dynamic_slice_in_dim(y, jax.lax.axis_index("model") * 8, 8, axis=1), None

        return jax.lax.scan(block, x, ws)[0]

    audit = la.audit_compiled(layers, ws, x, iters=0)
    assert audit.n_devices == 8
    reduces = audit.hlo.collectives["all-reduce"]
    assert reduces.count == 3  # one in the loop body, run three times
    assert reduces.operand_bytes == 3 * 4 * 64 * 4


def test_published_peaks_and_refusal_of_unknown_devices():
    assert la.device_family("TPU v5 lite") == "tpu-v5e"
    assert la.device_family("TPU v6 lite") == "tpu-v6e"
    assert la.device_family("NVIDIA H100 80GB HBM3") == "h100-sxm"
    assert la.device_family("NVIDIA H200") == "h200-sxm"
    assert la.device_family("cpu") == "cpu"
    assert la.device_family("Imaginary Accelerator 9000") is None
    assert la.published_peak("TPU v5 lite").flops_per_s == 197e12
    assert la.published_peak("NVIDIA H100 80GB HBM3", "int8").flops_per_s == pytest.approx(1978.9e12)

    flops, seconds = 1e12, 1.0
    assert la.mfu(flops, seconds, "TPU v5 lite", n_devices=4) == pytest.approx(1e12 / 4 / 197e12)
    for kind in ("cpu", "Imaginary Accelerator 9000"):
        with pytest.raises(la.UnknownDevice, match="measure_peak_flops"):
            la.mfu(flops, seconds, kind)
    with pytest.raises(la.UnknownDevice):
        la.published_peak("TPU v4", "float8_e4m3fn")  # known chip, no published figure for the dtype
    assert la.mfu(flops, seconds, "cpu", measured=2e12) == 0.5
    assert la.mfu(flops, seconds, "Imaginary Accelerator 9000", measured=la.Peak(4e12, "bench")) == 0.25


def test_measured_peak_and_timed_audit_give_mfu_and_hfu():
    peak = la.measure_peak_flops("float32", sizes=(64, 128), iters=2)
    assert peak.flops_per_s > 0 and "float32 matmul" in peak.source

    ws, x = _layers(), jnp.ones((BATCH, WIDTH))

    def sgd(ws, x):
        return ws - 0.1 * jax.grad(_scanned_loss)(ws, x)

    model = la.mlp_flops([WIDTH] * (LAYERS + 1), BATCH)  # 6 * weights * examples
    audit = la.audit_compiled(sgd, ws, x, donate_argnums=0, model_flops=model, iters=3, warmup=1,
                              peak_sizes=(64, 128))
    assert not ws.is_deleted()  # timing ran on copies of the donated weights
    assert audit.timing.iters == 3 and audit.timing.median_s > 0
    assert audit.peak.source.startswith("measured: float32")
    assert audit.published_peak is None  # no published figure for a CPU
    assert audit.mfu == pytest.approx(model / audit.timing.median_s / audit.peak.flops_per_s)
    assert audit.hfu == pytest.approx(audit.flops / audit.timing.median_s / audit.peak.flops_per_s)
    # The compiled step also differentiates the gelus and the input: more than the 6N convention.
    assert 0.8 < audit.model_to_hardware < 1.0

    out = json.loads(audit.to_json())
    assert out["mfu"] == audit.mfu and out["memory"]["peak"] == audit.memory.peak
    assert out["hlo"]["loops"][0]["trip_count"] == LAYERS
    text = audit.table()
    for label in ("FLOPs (per step)", "temporaries", "MFU", "HFU", "while loops"):
        assert label in text


def test_price_table_edits_change_the_dollar_figures(tmp_path):
    shipped = la.PriceTable.load()
    assert {"tpu-v5e", "tpu-v6e", "h100-sxm", "h200-sxm", "cpu"} <= set(shipped.prices)
    hour = la.dollars_per_run(3600.0, 1, "TPU v5 lite", 1, shipped)
    assert hour == shipped.prices["tpu-v5e"].usd_per_hour

    edited = json.loads(importlib.resources.files("leanjax.audit").joinpath("prices.json").read_text())
    edited["prices"]["tpu-v5e"]["usd_per_hour"] *= 3
    path = tmp_path / "prices.json"
    path.write_text(json.dumps(edited))
    mine = la.PriceTable.load(path)
    assert la.dollars_per_run(3600.0, 1, "TPU v5 lite", 1, mine) == pytest.approx(3 * hour)
    assert la.dollars_per_run(2.0, 1000, "TPU v5 lite", 8, mine) == pytest.approx(3 * hour * 8 * 2000 / 3600)

    # 1000 requests at 50 per 0.1 s step = 2 s of 4 chips.
    per_1k = la.dollars_per_1k_requests(0.1, 50, "TPU v5 lite", 4, mine)
    assert per_1k == pytest.approx(3 * hour * 4 * 2.0 / 3600)

    cheaper = shipped.with_price("cpu", 0.01, per="host-core")
    assert la.dollars_per_run(3600.0, 1, "cpu", 8, cheaper, host_cores=2) == pytest.approx(0.02)
    with pytest.raises(KeyError, match="no price"):
        la.dollars_per_run(1.0, 1, "Imaginary Accelerator 9000", 1, shipped)


def test_priced_audit_and_what_if_rows():
    ws, x = _layers(), jnp.ones((BATCH, WIDTH))
    prices = la.PriceTable({"cpu": la.Price(1.0, "host-core")}, as_of="test")
    base = la.audit_compiled(_scanned_loss, ws, x, iters=2, warmup=1, peak=1e9).priced(
        prices, steps=100, host_cores=2)
    assert base.dollars.per_run == pytest.approx(2.0 * base.timing.median_s * 100 / 3600)

    def unrolled():
        return la.audit_compiled(_unrolled_loss, list(ws), x, iters=2, warmup=1, peak=1e9).priced(
            prices, steps=100, host_cores=2)

    def int4():
        raise la.Unavailable("leanjax.transforms.quant is not built yet")

    rows = [la.what_if("unrolled", unrolled), la.what_if("int4 serving", int4)]
    assert rows[0].audit is not None and rows[1].unavailable.endswith("not built yet")
    text = la.what_if_table(base, rows)
    assert "unrolled" in text and "int4 serving: unavailable: leanjax.transforms.quant" in text
    with pytest.raises(ValueError, match="exactly one"):
        la.WhatIf("neither")
    with pytest.raises(ValueError, match="no measured step time"):
        la.audit_compiled(_scanned_loss, ws, x, iters=0).priced(prices)


def test_analytic_flops_match_the_traced_model():
    ws, x = _layers(), jnp.ones((BATCH, WIDTH))
    forward = la.mlp_flops([WIDTH] * (LAYERS + 1), BATCH, train=False)
    assert la.jaxpr_flops(_scanned_loss, ws, x) == forward
    assert la.jaxpr_flops(_unrolled_loss, list(ws), x) == forward
    assert la.mlp_flops([WIDTH] * (LAYERS + 1), BATCH) == 3 * forward

    seq, d, layers, batch = 16, 8, 2, 3

    def block(h, w):  # single-head attention + 4x MLP, pre-norm omitted: matmuls are what count
        q, k, v = h @ w["q"], h @ w["k"], h @ w["v"]
        a = jax.nn.softmax(q @ k.swapaxes(-1, -2) / d**0.5, axis=-1) @ v
        h = h + a @ w["o"]
        return h + jax.nn.gelu(h @ w["up"]) @ w["down"], None

    shapes = {"q": (d, d), "k": (d, d), "v": (d, d), "o": (d, d), "up": (d, 4 * d), "down": (4 * d, d)}
    params = {k: jnp.ones((layers, *s)) for k, s in shapes.items()}
    n_params = layers * sum(a * b for a, b in shapes.values())
    traced = la.jaxpr_flops(lambda p, h: jax.lax.scan(block, h, p)[0], params, jnp.ones((batch, seq, d)))
    expected = la.transformer_flops(n_params, n_layers=layers, d_model=d, seq_len=seq, tokens=batch * seq,
                                    train=False)
    assert traced == expected

    def conv(x, k):
        return jax.lax.conv_general_dilated(x, k, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))

    traced = la.jaxpr_flops(conv, jnp.ones((2, 8, 8, 3)), jnp.ones((3, 3, 3, 4)))
    assert traced == la.conv2d_flops(8, 8, (3, 3), 3, 4, 2, train=False)
    with pytest.raises(ValueError, match="while_loop"):
        la.jaxpr_flops(lambda x: jax.lax.while_loop(lambda c: c.sum() < 10, lambda c: c @ c, x), jnp.ones((2, 2)))


def test_time_step_never_consumes_donated_inputs():
    f = jax.jit(lambda a, b: (a + b, a.sum()), donate_argnums=0)
    a, b = jnp.ones((4,)), np.ones((4,), np.float32)
    timing = la.time_step(f, a, b, warmup=1, iters=3)
    assert timing.iters == 3 and 0 < timing.min_s <= timing.median_s
    assert not a.is_deleted()
    with pytest.raises(ValueError, match="iters"):
        la.time_step(f, a, b, iters=0)


def _tiny_subject(compute_dtype=jnp.float32):
    from leanjax.audit import interventions

    k1, k2 = jax.random.split(jax.random.key(0))
    params = {"hidden": {"kernel": jax.random.normal(k1, (64, 128)) / 8, "bias": jnp.zeros(128)},
              "head": {"kernel": jax.random.normal(k2, (128, 64)) / 11, "bias": jnp.zeros(64)}}

    def logits(p, x):
        x = x.astype(compute_dtype)
        h = jax.nn.relu(x @ p["hidden"]["kernel"].astype(compute_dtype) + p["hidden"]["bias"])
        return (h @ p["head"]["kernel"].astype(compute_dtype) + p["head"]["bias"]).astype(jnp.float32)

    def loss(p, batch, rng):
        return -jnp.mean(jax.nn.log_softmax(logits(p, batch["x"]))[:, 0]), {}

    def rebuild(**options):  # this model has a compute dtype, and no remat policies
        if "dtype" in options:
            return _tiny_subject(jnp.dtype(options["dtype"]))
        return subject

    batch = {"x": jnp.ones((8, 64))}
    subject = interventions.Subject(params=params, loss=loss, serve=lambda p, b: logits(p, b["x"]),
                                    tx=optax.adam(1e-3), train_batch=batch, serve_batch=batch, rebuild=rebuild)
    return subject


def test_pruning_row_trains_with_masks_that_hold_pruned_weights_at_zero():
    from leanjax.audit import interventions

    subject = _tiny_subject()
    train = interventions.audit_train(subject, "baseline", iters=0)
    pruned = interventions.pruning(subject, sparsity=0.5, iters=0)
    assert pruned.memory.arguments > train.memory.arguments  # the bool masks ride in the optimizer state
    assert pruned.name == "pruned 50%"


def test_lora_row_trains_adapters_only_and_unchanged_rows_are_flagged():
    from leanjax.audit import interventions

    subject = _tiny_subject()
    train = interventions.audit_train(subject, "baseline", iters=0)
    lora = interventions.lora(subject, iters=0)
    # Adam moments for the adapters only: rank 8 on 64x128 and 128x64 kernels.
    assert lora.memory.arguments < train.memory.arguments
    same = interventions.what_if("same", lambda: interventions.audit_train(subject, "same", iters=0))
    assert interventions._unless_unchanged(same, train).unavailable.startswith("no effect on this model")
    # No layer stack: the remat and student rows say so in terms of the model.
    remat = interventions.what_if("remat", lambda: interventions.remat(subject, "dots", iters=0))
    assert remat.unavailable.startswith("the model has no layer stack")


@pytest.mark.slow
def test_train_what_ifs_audit_every_transformed_step():
    from leanjax.audit import interventions

    subject = _tiny_subject()
    train = interventions.audit_train(subject, "baseline", iters=0)
    rows = {r.name: r for r in interventions.train_what_ifs(subject, train, remat_policies=("dots",), iters=0)}
    assert rows["qlora r=8 (nf4)"].audit.memory.arguments < rows["lora r=8"].audit.memory.arguments
    assert rows["remat dots"].unavailable.startswith("the model has no layer stack")
    assert rows["bf16 compute"].audit.hlo != train.hlo
    # Masks in the optimizer state: more memory, the same dense FLOPs (pruning pays at serving time).
    assert rows["pruning"].audit.memory.arguments > train.memory.arguments
    assert rows["pruning"].audit.flops >= train.flops
    assert "no layer stack" in rows["distilled student"].unavailable
    accum = rows["grad accumulation x2"].audit
    assert accum.name == "grad accumulation x2" and abs(accum.flops / train.flops - 1) < 0.2


def test_serving_what_ifs_store_smaller_weights():
    from leanjax.audit import interventions

    subject = _tiny_subject()
    serve = interventions.audit_serve(subject, "serving", iters=0)
    rows = {r.name: r for r in interventions.serve_what_ifs(subject, iters=0)}
    int8, int4, packed = (rows[n].audit for n in ("int8 weights", "int4 weights", "2:4 sparse weights"))
    assert int8.memory.arguments < serve.memory.arguments
    assert int4.memory.arguments < int8.memory.arguments
    assert packed.memory.arguments < serve.memory.arguments  # half the values and 2-bit positions
    assert rows["compacted 50%"].unavailable.startswith("no unit groups for this model's layout")
    assert interventions.requests_per_step(subject) == 8


@pytest.mark.slow
def test_cli_what_if_rows_for_the_baseline_experiment(tmp_path, data_dir):
    from leanjax.experiments.audit import main

    out = tmp_path / "audit.json"
    assert main(["--config", "configs/baseline/default.py:tiny", "--iters", "1", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())
    train = {r["name"]: r for r in rows["train"]}
    assert train["baseline"]["audit"]["dollars"]["per_run"] > 0
    assert train["lora r=8"]["audit"]["memory"]["peak"] < train["baseline"]["audit"]["memory"]["peak"]
    assert train["remat dots"]["unavailable"].startswith("a CNN has no layer stack")
    assert [r["name"] for r in rows["serve"]] == ["baseline", "int8 weights", "int4 weights", "2:4 sparse weights",
                                                  "compacted 50%"]
    serve = {r["name"]: r for r in rows["serve"]}
    assert serve["compacted 50%"]["audit"]["flops"] < serve["baseline"]["audit"]["flops"]  # smaller matmuls
    # Data-side rows: the same step, a multiple of the run.
    kept, study = train["data kept 50%"], train["hyperband study of 27 trials (eta 3)"]
    assert kept["run_fraction"] == 0.5 and study["run_fraction"] == pytest.approx(4.0)
    per_run = train["baseline"]["audit"]["dollars"]["per_run"]
    assert kept["audit"]["dollars"]["per_run"] == pytest.approx(per_run / 2, rel=0.05)
