"""Experiment `remat`: the Transformer LM train step under each gradient-checkpointing policy.

Gradient checkpointing (Chen et al. 2016, https://arxiv.org/abs/1604.06174) recomputes activations in
the backward pass instead of keeping them. The Shakespeare char LM runs its blocks in one `lax.scan`
(on XLA CPU remat of unrolled layers saves nothing: the scheduler puts the recompute next to the
original) and each policy of `config.policies` (`leanjax.models.remat` names) is compiled, its peak read
from `memory_analysis()`, and timed with calls alternating between policies. Then `auto`
(`leanjax.audit.remat_auto`): the fastest policy whose peak fits `config.budget_fraction` of `none`'s,
and the largest batch that budget holds under it vs under `none`.

Headline: `<policy>.memory_ratio` and `<policy>.step_time_ratio` (vs the first policy, `none`) keyed by
the policy's kind (`none`, `dots`, `nothing`, `names`), `auto.policy`, `auto.max_batch_ratio`.
Regime arms (issue 19): `segment:k` in `config.policies` (nested checkpointing over the scanned blocks,
`leanjax.models.remat.segment_scan`) gives `segment.*`; `bound.nothing_memory_ratio` is what must stay
live whatever the policy (`nothing`'s compiled peak less all saved block inputs but one: the train state
in and out, one block's backward working set, the logits) over `none`'s; `depth.nothing_memory_ratio`
is `nothing`/`none` compiled (not timed) at the deepest of `config.depth_trend`, the trend in metrics.
With `config.whatif` the metrics also hold what `python -m leanjax.experiments.audit` predicts for each policy.
"""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

import jax
from flax import nnx

from leanjax import data, losses
from leanjax.audit import Memory, interventions, remat_auto
from leanjax.experiments import _launch
from leanjax.experiments._build import Build
from leanjax.models import CausalLM, TransformerConfig, functional
from leanjax.state import TrainState
from leanjax.step import make_train_step

_MIB = 2**20


def build(config):
    """Model (remat policy and layer scan from `config.model`), loss, metrics and data sources."""
    m = config.model
    train = data.lm_source("shakespeare", "train", seq_len=m.seq_len, tokenizer=m.tokenizer)
    evaluation = data.lm_source("shakespeare", "validation", seq_len=m.seq_len, tokenizer=m.tokenizer)
    model = CausalLM(TransformerConfig(
        vocab_size=train.vocab_size, hidden_size=m.hidden_size, num_layers=m.num_layers, num_heads=m.num_heads,
        intermediate_size=m.intermediate_size, max_position_embeddings=m.seq_len, type_vocab_size=0,
        dropout=m.dropout, causal=True, scan_layers=m.scan_layers, remat=m.remat), rngs=nnx.Rngs(config.seed))
    apply_fn, params = functional(model)
    return Build(params=params, loss=losses.lm_loss(apply_fn), metrics=losses.lm_metrics(apply_fn),
                 train=train, eval=evaluation, tx=_launch.config_optimizer(config), seed=config.seed,
                 batch_size=config.batch_size, eval_batch_size=config.eval_batch_size, num_steps=config.num_steps)


def _with_policy(config, policy: str):
    changed = copy.deepcopy(config)
    changed.model.remat, changed.model.scan_layers = policy, True
    return changed


def _resized(batch: dict, size: int) -> dict:
    """Abstract stand-in for a batch of `size` rows: compiling for memory needs shapes only."""
    return {k: jax.ShapeDtypeStruct((size, *v.shape[1:]), v.dtype) for k, v in batch.items()}


def _kind(policy: str) -> str:
    return policy.partition(":")[0]


def _table(rows: list[dict]) -> str:
    lines = ["| policy | peak memory | memory ratio | compiled GFLOP | step time | step time ratio |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| `{r['policy']}` | {r['peak_bytes'] / _MIB:.1f} MiB | {r['memory_ratio']:.3f} | "
                     f"{r['flops'] / 1e9:.2f} | {r['step_time_s'] * 1e3:.0f} ms | {r['step_time_ratio']:.3f} |")
    return "\n".join(lines)


def run(config, workdir):
    policies = tuple(config.policies)
    if not policies or policies[0] != "none":
        raise _launch.ConfigError(f"config.policies must start with 'none' (the reference), got {policies}")
    kinds = [_kind(p) for p in policies]
    if len(set(kinds)) != len(kinds):
        raise _launch.ConfigError(f"config.policies has two policies of one kind: {policies}")
    base = build(config)
    tx = base.tx
    batch = next(iter(data.batches(base.train, batch_size=config.batch_size, seed=config.seed)))
    steps: dict[str, tuple] = {}

    def build_step(policy: str, batch_size: int | None):
        if policy not in steps:
            parts = build(_with_policy(config, policy))  # same seed: the same initial params
            state = TrainState.create(parts.params, tx, jax.random.key(config.seed))
            steps[policy] = (make_train_step(parts.loss, tx), state)
        step, state = steps[policy]
        return step, (state, batch if batch_size is None else _resized(batch, batch_size))

    table = remat_auto.measure(build_step, policies, rounds=config.rounds)
    ref = table[0]
    rows = [dict(policy=c.policy, peak_bytes=c.peak_bytes, flops=c.flops, step_time_s=c.step_time_s,
                 memory_ratio=c.peak_bytes / ref.peak_bytes, step_time_ratio=c.step_time_s / ref.step_time_s)
            for c in table]

    budget = int(config.budget_fraction * ref.peak_bytes)
    choice = remat_auto.pick(table, budget)
    search = dict(start=config.batch_size, limit=config.max_batch_limit)
    fit_auto = remat_auto.max_batch(build_step, choice.policy, budget, **search)
    fit_none = remat_auto.max_batch(build_step, "none", budget, **search)

    headline = {}
    for row in rows:
        headline[f"{_kind(row['policy'])}.memory_ratio"] = row["memory_ratio"]
        headline[f"{_kind(row['policy'])}.step_time_ratio"] = row["step_time_ratio"]
    floor = _floor(config, build_step, ref.peak_bytes)
    trend = _depth_trend(config, tx, batch)
    headline["bound.nothing_memory_ratio"] = floor["bound_ratio"]
    headline["depth.nothing_memory_ratio"] = trend[-1]["nothing_memory_ratio"]
    headline["auto.policy"] = choice.policy
    headline["auto.max_batch_ratio"] = fit_auto.batch / fit_none.batch

    metrics = dict(
        batch_size=config.batch_size, policies=rows, budget_bytes=budget, auto=choice.to_dict(),
        max_batch={"auto": dataclasses.asdict(fit_auto), "none": dataclasses.asdict(fit_none)},
        bound=floor, depth_trend=trend,
        whatif=_whatif(config, policies, table) if config.whatif else "disabled (config.whatif=False)")
    text = "\n".join([_table(rows), "", f"auto (budget {budget / _MIB:.1f} MiB): {choice.reason}",
                      f"max batch under that budget: {fit_auto.policy!r} {fit_auto.batch}, 'none' {fit_none.batch}"])
    print(text)
    (Path(workdir) / "table.md").write_text(text + "\n")
    return metrics, headline


def _floor(config, build_step, none_peak: int) -> dict:
    """`nothing`'s compiled memory split, and the bound no per-block policy can go below: its peak less
    the block inputs it saves beyond one (segment or offload schemes can only move those)."""
    fn, args = build_step("nothing", None)
    mem = Memory.of(fn.lower(*args).compile())
    m = config.model
    block_input = config.batch_size * m.seq_len * m.hidden_size * 4  # f32 [B, T, D]
    bound = mem.peak - (m.num_layers - 1) * block_input
    return dict(nothing_peak_bytes=mem.peak, arguments=mem.arguments, outputs=mem.outputs,
                temporaries=mem.temporaries, aliased=mem.aliased, block_input_bytes=block_input,
                bound_bytes=bound, bound_ratio=bound / none_peak)


def _depth_trend(config, tx, batch) -> list[dict]:
    """`nothing` vs `none` compiled peaks (no timing) at each depth of `config.depth_trend`."""
    rows = []
    for layers in config.depth_trend:
        deeper = copy.deepcopy(config)
        deeper.model.num_layers = layers

        def build_step(policy, _batch, deeper=deeper):
            parts = build(_with_policy(deeper, policy))
            return make_train_step(parts.loss, tx), (TrainState.create(parts.params, tx, jax.random.key(0)),
                                                        batch)

        none, nothing = remat_auto.measure(build_step, ("none", "nothing"), timing=False)
        rows.append(dict(num_layers=layers, none_peak_bytes=none.peak_bytes, nothing_peak_bytes=nothing.peak_bytes,
                         nothing_memory_ratio=nothing.peak_bytes / none.peak_bytes))
    return rows


def _whatif(config, policies, table) -> dict:
    """What `python -m leanjax.experiments.audit --config configs/remat/default.py` predicts for each policy's peak.

    On CPU no runtime memory is measured (`Device.memory_stats()` is None), so the figure compared is
    this experiment's compiled peak: the check is that the what-if path (`interventions.remat` on the
    experiment's `build`) compiles the same step.
    """
    from leanjax.experiments._audit import subject  # the what-if rows' own construction

    base = subject(config, build)
    out = {}
    for c in table:
        predicted = interventions.remat(base, c.policy, iters=0).memory.peak
        out[c.policy] = dict(predicted_bytes=predicted, measured_bytes=c.peak_bytes,
                             rel_error=abs(predicted - c.peak_bytes) / c.peak_bytes)
    out["max_rel_error"] = max(v["rel_error"] for v in out.values())
    return out


if __name__ == "__main__":
    raise SystemExit(_launch.main("remat", run))
