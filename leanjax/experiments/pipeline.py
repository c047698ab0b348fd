"""Experiment `pipeline`: the main job as a cost-to-target benchmark, lean vs brute force at one accuracy.

    python -m leanjax.experiments.pipeline [--config configs/pipeline/default.py[:tiny]] [--workdir DIR]

As DAWNBench (Coleman et al. 2017, https://dawn.cs.stanford.edu/benchmark/) and MLPerf Training
(Mattson et al. 2020, https://arxiv.org/abs/1910.01500) judge systems: `target_accuracy` is fixed before the
run; a training run stops at its first evaluation that reaches it, a run that never does pays its budget.
On all-MiniLM-L6-v2 and the shipped tweets (3 classes):

- `brute_<rate>`: brute force as practised without leanjax: every weight fine-tuned in f32, unrolled layers,
  no remat, synchronous evaluation, one full-length run per rate of a grid. Its cost: every grid run. The
  `oracle` is the grid's cheapest run to the target (its rate handed over for free).
- lean: `tokens` (mined tokens, warm-started: shorter sequences), `tune` (Hyperband over a log grid of rates
  on a small QLoRA proxy), `lean` (QLoRA, remat auto, asynchronous evaluation of the int8 model it will
  serve, early stop when that reaches the target), `cache` (the teacher's logits only for the examples the
  students will see), `student_L<d>` (students of several depths, vocabulary cut, offline KD; both skipped
  when the teacher's margin over the target leaves a student no chance), `serve` (brute f32, teacher int8 /
  NF4 / int8 with a cut vocabulary, students int8: accuracy by the served program, size, time per batch timed
  alternately, $ per 1k requests; the cheapest at the target wins, the smallest within 10% of it).

Memory is each compiled train step's peak; FLOPs the compiled programs' (while bodies times trip counts)
times the steps run; $ each stage's wall time priced by `leanjax/audit/prices.json`. Stages are resumable
(`leanjax.train.stages`): a killed run, rerun with the same command, gives the same accuracies.
"""

from __future__ import annotations

import jax
import numpy as np

from leanjax import data, losses, transforms, tune
from leanjax.audit.serving import served_accuracy
from leanjax.audit.timing import time_interleaved
from leanjax.data.source import to_str
from leanjax.experiments import _launch, _minilm, _report
from leanjax.experiments import _pipeline as P
from leanjax.experiments._build import Build
from leanjax.step import evaluate, make_eval_step, make_train_step
from leanjax.train import fit, steps_to_target
from leanjax.train.async_eval import AsyncEvaluator
from leanjax.train.stages import Stage, run_stages
from leanjax.transforms.distill import cache_topk, offline_distillation_loss
from leanjax.weights.embeddings import mine_tokens

INPUTS = P.INPUTS


def _fit(ctx, name, state, step, source, *, num_steps, batch_size, **kw):
    c = ctx.c
    return _minilm.finished(fit(state, step, data.batches(source, batch_size=batch_size, seed=c.seed),
                                num_steps=num_steps, workdir=ctx.dir(name), log_every=max(1, num_steps // 10),
                                progress=c.progress, desc=f"pipeline/{name}", **kw))


def stage_brute(ctx, rate: float) -> dict:
    c, b = ctx.c, ctx.c.brute
    _, params, tx, step, audit, eval_step = P.brute_parts(ctx)
    pool, _, test = ctx.sources("base", b.seq_len)
    result = _fit(ctx, f"brute_{rate:.0e}", P.state(params, tx, c.seed, rate), step, pool, num_steps=b.num_steps,
                  batch_size=b.batch_size, eval_every=c.eval_every,
                  eval_fn=lambda p: evaluate(eval_step, p, data.eval_batches(test, c.eval_batch_size)),
                  on_eval=lambda s, m: m["accuracy"] >= c.target_accuracy)
    curve = [[r["step"], r["eval_accuracy"]] for r in result.history if "eval_accuracy" in r]
    steps = curve[-1][0]
    return {**P.train_figures(audit, steps, b.batch_size, b.seq_len), "learning_rate": rate,
            "accuracy": curve[-1][1], "eval_curve": curve, "steps_to_target": steps_to_target(curve, c.target_accuracy),
            "steps_per_s": result.steps_per_s, "weight_bytes": transforms.weight_bytes(params)}


def stage_tokens(ctx) -> dict:
    c, t = ctx.c, ctx.c.tokens
    texts = [to_str(e["text"]) for e in ctx.examples()[0]]
    new, saved = mine_tokens(texts, ctx.tokenizer(), num_new=t.num_new, min_count=t.min_count)
    ctx.results["tokens"] = {"new_tokens": new}
    lengths = {k: np.asarray(ctx.sources(k, c.brute.seq_len)[0].arrays["attention_mask"]).sum(1)
               for k in ("base", "extended")}
    return {"new_tokens": new, "num_new": len(new), "tokens_saved": int(sum(saved.values())),
            "mean_tokens": {k: float(v.mean()) for k, v in lengths.items()},
            "coverage_at_lean_seq": {k: float(np.mean(v <= c.lean.seq_len)) for k, v in lengths.items()}}


def stage_tune(ctx) -> dict:
    """TPE + Hyperband over the QLoRA rate on a `proxy_layers`-layer proxy, scored on held-out tweets."""
    import optuna

    c, t = ctx.c, ctx.c.tune
    model_config, base = ctx.lean_base(t.proxy_layers)
    params, mask = P.qlora(base, c, c.seed)
    apply_fn = P.apply_fn_for(model_config)
    pool, val, _ = ctx.sources("extended", t.seq_len)
    tx = P.optimizer(t.max_steps)
    step = make_train_step(transforms.apply(losses.classification_loss(apply_fn, inputs=INPUTS)), tx,
                           trainable=mask, grad_accum_steps=P.accum(c, t.batch_size))
    step, audit = P.compiled(step, P.state(params, tx, c.seed, 1e-3, mask), P.first_batch(pool, t.batch_size, c.seed))
    eval_step, eval_audit = P.compiled(make_eval_step(transforms.apply(losses.classification_metrics(
        apply_fn, inputs=INPUTS))), params, P.eval_batch(val, c.eval_batch_size))

    def objective(trial, sampled):
        result = tune.train_trial(
            P.state(params, tx, c.seed + trial.number, sampled["learning_rate"], mask), step,
            data.batches(pool, batch_size=t.batch_size, seed=c.seed), num_steps=t.max_steps,
            eval_fn=lambda p: evaluate(eval_step, p, data.eval_batches(val, c.eval_batch_size)),
            eval_every=t.min_steps, report=tune.pruning_reporter(trial, "accuracy"))
        print(f"[pipeline/tune] trial {trial.number}: lr {sampled['learning_rate']:.2e} -> val "
              f"{result.metrics['accuracy']:.3f} at step {result.steps}{' (pruned)' if result.stopped else ''}")
        return result.metrics["accuracy"], result.steps, result.stopped

    study = tune.open_study("pipeline-lr", optuna.storages.InMemoryStorage(), sampler="tpe", pruner="hyperband",
                            seed=c.seed, min_resource=t.min_steps, max_resource=t.max_steps,
                            reduction_factor=t.reduction_factor, n_startup_trials=t.n_startup_trials)
    if t.log_grid:  # one rate: a log-spaced grid covers the range evenly, where a few random draws can cluster
        for rate in np.geomspace(*t.learning_rate_range[1:], t.n_trials):
            study.enqueue_trial({"learning_rate": float(rate)})
    tune.run_worker(study, objective, space={"learning_rate": tuple(t.learning_rate_range)}, n_trials=t.n_trials)
    trials = tune.finished(study)
    done = [tr for tr in trials if tr.state.name == "COMPLETE" and tr.value is not None]
    if not done:
        raise RuntimeError("the tuning study completed no trial: raise tune.n_trials")
    best = max(done, key=lambda tr: tr.value)
    steps = sum(int(tr.user_attrs[tune.STEPS_ATTR]) for tr in trials)
    evals = sum(len(tr.intermediate_values) for tr in trials) * -(-len(val) // c.eval_batch_size)
    return {**P.train_figures(audit, steps, t.batch_size, t.seq_len), "eval_flops": eval_audit.flops * evals,
            "best_learning_rate": best.params["learning_rate"], "best_val_accuracy": best.value,
            "trials": [{"learning_rate": tr.params["learning_rate"], "state": tr.state.name, "value": tr.value,
                        "steps": int(tr.user_attrs[tune.STEPS_ATTR])} for tr in trials]}


def stage_lean(ctx) -> dict:
    """QLoRA + remat auto + mined tokens + tuned rate; asynchronous evaluation stops it at the target."""
    c, lean = ctx.c, ctx.c.lean
    model_config, state, tx, mask = P.lean_start(ctx)
    state = tune.set_hyperparams(state, learning_rate_scale=ctx.results["tune"]["best_learning_rate"])
    pool, _, test = ctx.sources("extended", lean.seq_len)
    batch = P.first_batch(pool, lean.batch_size, c.seed)
    budget = int(lean.memory_budget * max(r["peak_bytes"] for r in _grid(ctx).values()))
    policy, step, audit, candidates = P.remat_auto(model_config, state, tx, mask, batch, lean.remat_policies, budget,
                                                   P.accum(c, lean.batch_size))
    eval_fn = P.served_int8_eval(model_config, lean.seq_len, state.params, test, c.eval_batch_size)
    evaluator = AsyncEvaluator(eval_fn, max_pending=lean.num_steps,
                               stop_fn=lambda s, m: m["accuracy"] >= c.target_accuracy)
    try:  # every eval point checkpointed: the teacher is the params of the first one at the target
        result = _fit(ctx, "lean", state, step, pool, num_steps=lean.num_steps, batch_size=lean.batch_size,
                      eval_every=lean.eval_every, checkpoint_every=lean.eval_every,
                      keep_checkpoints=lean.num_steps // lean.eval_every + 1, **evaluator.fit_hooks())
    finally:
        evaluations = evaluator.close(wait=True)
    curve = [[e.step, e.metrics["accuracy"]] for e in evaluations]
    reached = steps_to_target(curve, c.target_accuracy)
    chosen = reached if reached is not None else curve[-1][0]
    del result
    return {**P.train_figures(audit, max(s for s, _ in curve), lean.batch_size, lean.seq_len),
            "accuracy": dict(curve)[chosen], "teacher_step": chosen, "steps_to_target": reached, "eval_curve": curve,
            "learning_rate": ctx.results["tune"]["best_learning_rate"], "remat": policy,
            "remat_candidates": [[cand.policy, cand.peak_bytes, cand.flops] for cand in candidates]}


def stage_cache(ctx) -> dict:
    c = ctx.c
    if why := P.students_skipped(ctx):
        return {"skipped": why}
    model_config, dense = P.teacher(ctx)
    apply_fn = P.apply_fn_for(model_config)
    seen = P.distill_set(ctx)
    batch = P.eval_batch(seen, c.eval_batch_size)
    logits, audit = P.compiled(jax.jit(lambda p, b: apply_fn(p, *(b[n] for n in INPUTS))), dense, batch)
    cache = cache_topk(lambda b: logits(dense, b), data.eval_batches(seen, c.eval_batch_size), len(seen), P.NUM_LABELS)
    np.savez(ctx.dir("stages") + "/teacher_logits.npz", **cache)
    return {"examples": len(seen), "cache_flops": audit.flops * -(-len(seen) // c.eval_batch_size)}


def stage_student(ctx, layers: int) -> dict:
    c, d = ctx.c, ctx.c.distill
    if why := P.students_skipped(ctx):
        return {"skipped": why, "layers": layers}
    apply_fn, params, info = P.student(ctx, layers)
    cache = dict(np.load(ctx.dir("stages") + "/teacher_logits.npz"))
    train = data.ArraySource({**P.distill_set(ctx).arrays, **cache})
    tx = P.optimizer(d.num_steps, name=d.optimizer)
    loss = offline_distillation_loss(apply_fn, inputs=INPUTS, alpha=d.alpha, temperature=d.temperature)
    step, audit = P.compiled(make_train_step(loss, tx, grad_accum_steps=P.accum(c, d.batch_size)),
                             P.state(params, tx, c.seed, d.learning_rate), P.first_batch(train, d.batch_size, c.seed))
    _fit(ctx, f"student_L{layers}", P.state(params, tx, c.seed, d.learning_rate), step, train,
         num_steps=d.num_steps, batch_size=d.batch_size)
    return {**P.train_figures(audit, d.num_steps, d.batch_size, c.lean.seq_len), "layers": layers, **info,
            "params": int(sum(x.size for x in jax.tree.leaves(params)))}


def stage_serve(ctx) -> dict:
    s = ctx.c.serve
    programs, out = {}, {}
    for name, (fn, params, test) in P.served(ctx, _oracle(ctx)).items():
        batch = P.eval_batch(test, s.batch_size)
        program, audit = P.compiled(jax.jit(transforms.apply(fn)), params, *(batch[n] for n in INPUTS))
        def bound(*x, program=program, params=params):
            return program(params, *x)
        programs[name] = (bound, tuple(batch[n] for n in INPUTS))
        out[name] = {"accuracy": served_accuracy(bound, data.eval_batches(test, s.batch_size), INPUTS),
                     "weight_bytes": transforms.weight_bytes(params), "peak_bytes": audit.memory.peak,
                     "flops_per_request": audit.flops / s.batch_size}
    for name, seconds in time_interleaved(programs, repeats=s.timing_rounds).items():
        out[name].update(batch_time_s=seconds, usd_per_1k_requests=ctx.rate * seconds / 3.6 / s.batch_size)
    return {"arms": out, "batch_size": s.batch_size}


def _grid(ctx) -> dict:
    return {k: v for k, v in ctx.results.items() if k.startswith("brute_")}


def _oracle(ctx) -> dict:
    return _report.oracle(_grid(ctx))


def stages(ctx) -> list[Stage]:
    c = ctx.c
    out = [Stage(f"brute_{r:.0e}", f"brute force, grid run at rate {r:.0e}: full FT f32, no remat, sync eval",
                 lambda r=r: stage_brute(ctx, r), ctx.dir(f"brute_{r:.0e}")) for r in c.brute.learning_rates]
    out += [Stage("tokens", "lean: mined tokens, warm-started from their pieces", lambda: stage_tokens(ctx)),
            Stage("tune", "lean: TPE + Hyperband rate study on a QLoRA proxy", lambda: stage_tune(ctx)),
            Stage("lean", "lean: QLoRA, remat auto, async eval, stop at target", lambda: stage_lean(ctx),
                  ctx.dir("lean")),
            Stage("cache", "lean: teacher logits for the examples the students see", lambda: stage_cache(ctx))]
    out += [Stage(f"student_L{n}", f"lean: {n}-layer student, offline KD", lambda n=n: stage_student(ctx, n),
                  ctx.dir(f"student_L{n}")) for n in c.distill.student_layers]
    return out + [Stage("serve", "serving candidates at the target: accuracy, size, $/1k", lambda: stage_serve(ctx))]


def build(config):
    """`--audit`: the brute-force reference's train and serving steps (the pipeline's "before")."""
    ctx = P.Context(config, workdir="")
    model_config, params = ctx.pretrained(False)
    apply_fn = P.apply_fn_for(model_config)
    pool, _, test = ctx.sources("base", config.brute.seq_len)
    return Build(params=params, loss=losses.classification_loss(apply_fn, inputs=INPUTS),
                 metrics=losses.classification_metrics(apply_fn, inputs=INPUTS), train=pool, eval=test,
                 tx=P.optimizer(config.brute.num_steps), seed=config.seed, batch_size=config.brute.batch_size,
                 eval_batch_size=config.eval_batch_size, num_steps=config.brute.num_steps)


def run(config, workdir):
    ctx = P.Context(config, workdir)
    try:
        run_stages(stages(ctx), ctx.dir("stages"), ctx.results, prefix="[pipeline]")
    except _minilm.Preempted:
        return {"preempted": True}, {}
    headline, breakdown = _report.headline_of(ctx.results, config.target_accuracy, ctx.rate)
    paths = _report.write(workdir, ctx.results, headline, breakdown)
    print(f"[pipeline] report: {paths['md']}", flush=True)
    return {"stages": ctx.results, "breakdown": breakdown, "report": paths}, headline


if __name__ == "__main__":
    raise SystemExit(_launch.main("pipeline", run))
