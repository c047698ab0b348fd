"""Adapters: N LoRA adapters over one frozen base served in one program, and what DoRA costs over LoRA.

Serving: `transforms.stack_adapters` stacks N adapter trees over one (NF4, scanned) base and
`with_adapter_ids` gives each request of a batch its adapter; the reference is the same batch through a
plain single-adapter tree. Memory is the compiled peak (`memory_analysis()`: arguments + outputs +
temporaries - aliased); `memory_overhead_N` = peak(N) / (peak(1) + (N - 1) x one adapter's bytes), 1.0
when N adapters cost only their own bytes. Throughput: requests/s with N distinct adapters / with one,
timed alternating between the programs (median).

DoRA (arXiv:2402.09353) vs LoRA: one training step each (value and gradient of the adapters, SGD update)
on the same base, timed alternating. leanjax's DoRA holds the column norm constant (paper Sec. 4.3) and
computes it factored, without building `W0 + s A B` (see `LoRA.merged_column_norm`).

Headline: `multi_adapter.memory_overhead_16`, `multi_adapter.throughput_ratio_16`, `dora.step_time_ratio`.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from leanjax import transforms as T
from leanjax.audit.compiled import Memory
from leanjax.audit.timing import time_interleaved
from leanjax.experiments import _launch
from leanjax.experiments._build import Build
from leanjax.models import Transformer, TransformerConfig, functional
from leanjax.models.transformer import mean_pool

_MIB = 2 ** 20


def _base(config):
    m = config.model
    cfg = TransformerConfig(vocab_size=m.vocab_size, hidden_size=m.hidden_size, num_layers=m.num_layers,
                            num_heads=m.num_heads, intermediate_size=m.intermediate_size,
                            max_position_embeddings=config.seq_len, type_vocab_size=0, dropout=0.0,
                            scan_layers=True)
    apply_fn, params = functional(Transformer(cfg, rngs=nnx.Rngs(config.seed)))
    if config.base == "nf4":
        params = T.quantize(params, config.targets, bits=4, scheme="nf4", group_size=config.group_size,
                            layout=T.stacked_io)
    return apply_fn, params


def _adapter(params, config, seed: int, variant: str = "lora"):
    """A rank-r adapter on every target, moved off its init (B != 0) so that it changes the output."""
    lp = T.lora(params, config.targets, rank=config.rank, key=jax.random.key(seed), variant=variant,
                layout=T.stacked_io)

    def trained(x):
        if not isinstance(x, T.LoRA):
            return x
        return dataclasses.replace(x, b=0.01 * jax.random.normal(jax.random.key(1000 + seed), x.b.shape))

    return jax.tree.map(trained, lp, is_leaf=T.is_typed)


def _adapter_bytes(params) -> int:
    return sum(x.a.nbytes + x.b.nbytes for _, x in T.leaves_with_paths(params) if isinstance(x, T.LoRA))


def _serving(config, apply_fn, base, tokens):
    """`{N: (compiled program, args)}`: N = the configured adapter counts; the first is a plain tree."""
    def serve_one(p, tokens):
        return mean_pool(apply_fn(p, tokens))

    def serve_many(p, tokens, ids):
        return mean_pool(apply_fn(T.with_adapter_ids(p, ids), tokens))

    trees = [_adapter(base, config, seed) for seed in range(max(config.num_adapters))]
    programs = {}
    for n in config.num_adapters:
        if n == config.num_adapters[0]:
            if n != 1:
                raise _launch.ConfigError(f"config.num_adapters must start with 1, got {config.num_adapters}")
            args = (trees[0], tokens)
            fn = serve_one
        else:
            ids = jnp.arange(tokens.shape[0]) % n  # every adapter used, interleaved across the batch
            args = (T.stack_adapters(trees[:n]), tokens, ids)
            fn = serve_many
        programs[n] = (jax.jit(T.apply(fn)).lower(*args).compile(), args)
    return programs, _adapter_bytes(trees[0])


def _training(config, apply_fn, base, tokens):
    """`{variant: (compiled step, args)}`: one SGD step on the adapters for LoRA and DoRA."""
    def loss(p, tokens):
        return jnp.mean(apply_fn(p, tokens).astype(jnp.float32) ** 2)

    def step(train, frozen, tokens):
        value, grads = jax.value_and_grad(lambda t: T.apply(loss)(T.combine(t, frozen), tokens))(train)
        return jax.tree.map(lambda w, g: w - 1e-3 * g, train, grads), value

    programs = {}
    for variant in ("lora", "dora"):
        params = _adapter(base, config, 0, variant)
        train, frozen = T.partition(params, T.trainable(params, freeze_plain=True))
        args = (train, frozen, tokens)
        programs[variant] = (jax.jit(step).lower(*args).compile(), args)
    return programs


def build(config):
    """What `--audit` compiles: the adapters-only LoRA train step, and serving the largest N adapters."""
    apply_fn, base = _base(config)
    tokens = jax.random.randint(jax.random.key(config.seed), (config.batch_size, config.seq_len), 0,
                                config.model.vocab_size)
    params = _adapter(base, config, 0)
    n = max(config.num_adapters)
    many = T.stack_adapters([_adapter(base, config, seed) for seed in range(n)])

    def loss(p, batch, rng):
        return jnp.mean(apply_fn(p, batch["input_ids"]).astype(jnp.float32) ** 2), {}

    def serve(p, batch):
        return mean_pool(apply_fn(T.with_adapter_ids(p, batch["adapter_ids"]), batch["input_ids"]))

    return Build(params=params, loss=loss, metrics=serve, serve_params=many, tx=optax.sgd(1e-3), num_steps=1,
                 seed=config.seed, batch_size=config.batch_size, trainable=T.trainable(params, freeze_plain=True),
                 train_batch={"input_ids": tokens},
                 serve_batch={"input_ids": tokens, "adapter_ids": jnp.arange(config.batch_size) % n})


def run(config, workdir):
    apply_fn, base = _base(config)
    key = jax.random.key(config.seed)
    tokens = jax.random.randint(key, (config.batch_size, config.seq_len), 0, config.model.vocab_size)
    serving, one_adapter = _serving(config, apply_fn, base, tokens)
    peaks = {n: Memory.of(c).peak for n, (c, _) in serving.items()}
    times = time_interleaved(serving, repeats=config.rounds)

    train_tokens = tokens[:config.train_batch_size]
    training = _training(config, apply_fn, base, train_tokens)
    step_times = time_interleaved(training, repeats=config.rounds)

    rows = []
    for n in config.num_adapters:
        expected = peaks[1] + (n - 1) * one_adapter
        rows.append(dict(num_adapters=n, peak_bytes=peaks[n], memory_overhead=peaks[n] / expected,
                         step_time_s=times[n], requests_per_s=config.batch_size / times[n],
                         throughput_ratio=times[1] / times[n]))
    last = max(config.num_adapters)
    headline = {
        f"multi_adapter.memory_overhead_{last}": rows[-1]["memory_overhead"],
        f"multi_adapter.throughput_ratio_{last}": rows[-1]["throughput_ratio"],
        "dora.step_time_ratio": step_times["dora"] / step_times["lora"],
    }
    metrics = dict(serving=rows, adapter_bytes=one_adapter, base_bytes=T.weight_bytes(base),
                   train_step_time_s=step_times, batch_size=config.batch_size, seq_len=config.seq_len)
    lines = ["| adapters | compiled peak | memory overhead | batch time | requests/s | throughput ratio |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['num_adapters']} | {r['peak_bytes'] / _MIB:.2f} MiB | {r['memory_overhead']:.3f} | "
                     f"{r['step_time_s'] * 1e3:.1f} ms | {r['requests_per_s']:.1f} | {r['throughput_ratio']:.3f} |")
    lines += ["", f"one adapter: {one_adapter / _MIB:.3f} MiB; base: {T.weight_bytes(base) / _MIB:.2f} MiB "
              f"({config.base})", "",
              "| train step | time | ratio to LoRA |", "|---|---|---|"]
    for variant, t in step_times.items():
        lines.append(f"| {variant} | {t * 1e3:.1f} ms | {t / step_times['lora']:.3f} |")
    text = "\n".join(lines)
    print(text)
    (Path(workdir) / "table.md").write_text(text + "\n")
    return metrics, headline


if __name__ == "__main__":
    raise SystemExit(_launch.main("adapters", run))
