"""Experiment `fusion`: what XLA's jit buys on the Transformer LM train step, and how it compares with PyTorch.

The same train step (Shakespeare char LM, unrolled blocks, AdamW, f32, no dropout) runs three ways:
jitted (one XLA program: ops fused into kernels), op by op (`jax.disable_jit()`: every primitive its own
dispatch), and in PyTorch (`leanjax.experiments._torch_lm`, eager and `torch.compile`d forward, from the
same initial params: the step-0 losses must agree). Timed steps alternate between jit and the torch
variants in one process, so a machine shared with other jobs slows all of them alike.

Headline:
- `jit_speedup`: op-by-op step time / jitted step time.
- `fusions`: fusion kernels in the compiled step (`leanjax.audit.analyze`).
- `bytes_ratio`: bytes the jitted program accesses / bytes the same step's unoptimized HLO accesses
  (`lowered.as_text(dialect="hlo")`: every op reads its operands from and writes its result to memory,
  which is what op-by-op execution moves), both counted by `leanjax.audit`'s HLO cost rules.
- `mfu`: model FLOPs (`transformer_flops`, PaLM convention) per second / f32 matmul peak measured in
  this run (`measure_peak_flops`).
- `torch_eager.throughput_ratio`, `torch_compile.throughput_ratio`: leanjax tokens/s over torch's, same
  shapes; NaN with the reason in the metrics when torch is missing or disabled.
"""

from __future__ import annotations

import re

import jax
import numpy as np
from flax import nnx

from leanjax import data, losses
from leanjax.audit import analyze, audit_compiled, measure_peak_flops, time_interleaved, time_step, transformer_flops
from leanjax.experiments import _launch
from leanjax.experiments._build import Build
from leanjax.models import CausalLM, TransformerConfig, functional
from leanjax.state import TrainState
from leanjax.step import make_train_step

NAN = float("nan")


def build(config):
    """The model (post-LN, tied head, no dropout: what `_torch_lm.TorchLM` mirrors), loss and data."""
    m = config.model
    train = data.lm_source("shakespeare", "train", seq_len=m.seq_len, tokenizer=m.tokenizer)
    model_config = TransformerConfig(
        vocab_size=train.vocab_size, hidden_size=m.hidden_size, num_layers=m.num_layers, num_heads=m.num_heads,
        intermediate_size=m.intermediate_size, max_position_embeddings=m.seq_len, type_vocab_size=0,
        dropout=0.0, causal=True)
    apply_fn, params = functional(CausalLM(model_config, rngs=nnx.Rngs(config.seed)))
    # constant rate, no clipping: torch.optim.AdamW's update
    return Build(params=params, loss=losses.lm_loss(apply_fn), train=train, tx=_launch.config_optimizer(config),
                 seed=config.seed, batch_size=config.batch_size, num_steps=config.rounds,
                 extra={"model_config": model_config})


def model_flops(cfg: TransformerConfig, batch: int) -> float:
    """Analytic FLOPs of one train step: every block's projections plus the tied output head."""
    d, f = cfg.hidden_size, cfg.intermediate_size
    weights = cfg.num_layers * (4 * d * d + 2 * d * f) + cfg.vocab_size * d
    return transformer_flops(weights, n_layers=cfg.num_layers, d_model=d, seq_len=cfg.max_position_embeddings,
                             tokens=batch * cfg.max_position_embeddings)


def _with_signatures(hlo_text: str) -> str:
    """Unoptimized HLO prints computation headers without a signature (`ENTRY main.1 {`); the audit's
    parser expects the optimized form (`ENTRY %main (...) -> ... {`). The signature is not read (the
    parameters are instructions), so an empty one is added."""
    return re.sub(r"^(ENTRY\s+)?([^\s(]+)\s*\{\s*$", r"\1\2 () -> () {", hlo_text, flags=re.MULTILINE)


def _op_by_op_time(step, state, batch, steps: int) -> float:
    """Median seconds of the un-jitted step under `jax.disable_jit()` (one untimed warm-up call)."""
    with jax.disable_jit():
        return time_step(step, state, batch, warmup=1, iters=steps).median_s


def _torch_variants(config, params, batch, jax_loss: float) -> tuple[dict, dict]:
    """`({name: step()}, {name: reason})`: the runnable torch steps, and why the others are missing."""
    if not config.torch:
        return {}, {n: "disabled (config.torch=False)" for n in ("torch_eager", "torch_compile")}
    try:
        import torch
    except ImportError:
        why = "torch is not installed (the optional bench extra: pip install torch==2.13.0)"
        return {}, {"torch_eager": why,
                    "torch_compile": why if config.torch_compile else "disabled (config.torch_compile=False)"}
    from leanjax.experiments import _torch_lm

    m = config.model
    device = _torch_device(config.torch_device, torch)
    if device == "cuda":
        # XLA's default f32 dot precision on GPUs with tensor cores is TF32; give torch the same.
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    inputs, targets = (torch.from_numpy(np.asarray(batch[k], dtype=np.int64)).to(device)
                       for k in ("inputs", "targets"))
    steps, missing = {}, {}
    for name in ("torch_eager", "torch_compile"):
        if name == "torch_compile" and not config.torch_compile:
            missing[name] = "disabled (config.torch_compile=False)"
            continue
        model = _torch_lm.TorchLM(params, num_heads=m.num_heads, eps=1e-12).to(device)
        with torch.no_grad():
            loss0 = float(model(inputs, targets))
        # Same params, same batch: a mismatch means the two models differ, and the timing compares nothing.
        # TF32 rounds each dot's inputs to 10 mantissa bits, hence the looser tolerance on a GPU.
        if not np.isclose(loss0, jax_loss, rtol=1e-4 if device == "cpu" else 2e-3):
            raise AssertionError(f"{name}: step-0 loss {loss0:.6f} != leanjax {jax_loss:.6f}")
        forward = torch.compile(model) if name == "torch_compile" else model
        opt = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
        step = _torch_lm.train_step(forward, opt)
        try:
            step(inputs, targets)  # the first call compiles
        except Exception as e:  # noqa: BLE001  inductor needs a working C++ toolchain: report, don't crash
            missing[name] = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
            continue
        steps[name] = lambda step=step: float(step(inputs, targets))  # float() waits, on CPU and CUDA alike
    return steps, missing


def run(config, workdir):
    parts = build(config)
    cfg = parts.extra["model_config"]
    tx = parts.tx
    batch = next(iter(data.batches(parts.train, batch_size=config.batch_size, seed=config.seed)))
    state = TrainState.create(parts.params, tx, jax.random.key(config.seed))
    jit_step = make_train_step(parts.loss, tx)
    flops = model_flops(cfg, config.batch_size)

    audit = audit_compiled(jit_step, state, batch, name="train step", model_flops=flops, iters=0)
    unfused = analyze(_with_signatures(jit_step.lower(state, batch).as_text(dialect="hlo")))
    jax_loss = float(parts.loss(parts.params, batch, None)[0])

    torch_steps, missing = _torch_variants(config, parts.params, batch, jax_loss)

    # Alternate: one jitted step, then one step of each torch variant, round after round.
    median = time_interleaved({"jit": (jit_step, (state, batch)), **torch_steps}, repeats=config.rounds)

    op_by_op_s = _op_by_op_time(make_train_step(parts.loss, tx, jit=False), state, batch, config.eager_steps)
    peak = measure_peak_flops("float32")
    mfu = flops / median["jit"] / peak.flops_per_s

    headline = {
        "jit_speedup": op_by_op_s / median["jit"],
        "fusions": sum(audit.hlo.fusions.values()),
        "bytes_ratio": audit.bytes_accessed / unfused.bytes_accessed,
        "mfu": mfu,
    }
    for name in ("torch_eager", "torch_compile"):
        headline[f"{name}.throughput_ratio"] = median[name] / median["jit"] if name in median else NAN
    metrics = dict(
        step_time_s=median, op_by_op_step_time_s=op_by_op_s,
        tokens_per_step=config.batch_size * cfg.max_position_embeddings,
        model_flops=flops, compiled_flops=audit.flops, peak=dict(flops_per_s=peak.flops_per_s, source=peak.source),
        fusion_kinds=dict(audit.hlo.fusions), kernels=audit.hlo.kernels, bytes_accessed=audit.bytes_accessed,
        unfused_bytes_accessed=unfused.bytes_accessed, unfused_ops=unfused.kernels, step0_loss=jax_loss,
        torch_missing=missing, torch_threads=_torch_threads(), memory_peak_bytes=audit.memory.peak,
        device_kind=jax.devices()[0].device_kind)
    return metrics, headline


def _torch_device(choice: str, torch) -> str:
    """`choice` ("cpu", "cuda", or "auto": CUDA when JAX runs on a GPU and torch sees one)."""
    if choice == "auto":
        return "cuda" if jax.default_backend() == "gpu" and torch.cuda.is_available() else "cpu"
    if choice not in ("cpu", "cuda"):
        raise _launch.ConfigError(f"config.torch_device={choice!r}: use 'auto', 'cpu' or 'cuda'")
    if choice == "cuda" and not torch.cuda.is_available():
        raise _launch.ConfigError("config.torch_device='cuda' but torch sees no CUDA device")
    return choice


def _torch_threads() -> int | None:
    try:
        import torch
    except ImportError:
        return None
    return torch.get_num_threads()


if __name__ == "__main__":
    raise SystemExit(_launch.main("fusion", run))
