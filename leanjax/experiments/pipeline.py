"""Experiment `pipeline`: the lean pipeline end to end, beside the brute-force references, every stage audited.

    python -m leanjax.experiments.pipeline [--config configs/pipeline/default.py[:tiny]] [--workdir DIR]

On all-MiniLM-L6-v2 and the shipped tweet-sentiment data (3 classes), one run measures:

1. `brute`: the accuracy reference. Every weight fine-tuned in f32, layers unrolled, no remat,
   synchronous evaluation. `scratch`: the same architecture and step program from a random init, same
   steps and batches (reported beside it).
2. The lean run, stage by stage:
   - `tokens`: new tokens for frequent tweet words that WordPiece splits (handles, hashtags, ...),
     warm-started as the mean of their pieces' MiniLM embeddings (`init_embeddings(method="subword")`):
     tweets get shorter, so the lean run trains at a shorter sequence length for the same coverage.
   - `tune`: a short TPE + Hyperband study (Optuna, `leanjax.tune`) of the QLoRA learning rate on a
     `proxy_layers`-layer proxy, scored on tweets held out of the training pool (never the test set).
     With `select.fraction < 1` the best proxy then scores every training tweet (EL2N, Paul et al. 2021).
   - `lean`: QLoRA (NF4 encoder kernels and embeddings, rank-r LoRA; Dettmers et al. 2023) fine-tune of
     MiniLM with the tuned learning rate, remat `auto` (the policy the compiled peaks and FLOPs pick,
     `leanjax.audit.remat_auto.pick`), evaluated asynchronously; with `select.fraction < 1` on the
     `select.mode` fraction of the pool by EL2N, class balanced (what met its goal in the data_sampling
     experiment on MNIST; here it measured far worse, so the default trains on the whole pool). Every lean
     training step (proxy, QLoRA, student) accumulates gradients over micro-batches of `micro_batch`
     examples: the same batch and FLOPs, a fraction of the activation memory.
   - `distill`: a small student (the teacher's first `student_layers` layers, vocabulary cut to the
     `student_vocab` most frequent ids, position table cut to the sequence length) trained on the
     teacher's cached logits (offline KD) and the labels.
   - `serve`: the student quantized to int8 (kernels W8A8, embeddings int8 per row), vs the brute model
     served in f32: accuracy, weight bytes, FLOPs and measured time per request, $ per 1k requests.
3. `report.md` and a self-contained `report.html` (figures embedded as PNG) in the workdir.

Measured, never assumed: memory is the compiled train step's peak (`memory_analysis()`); FLOPs are the
compiled programs' (`leanjax.audit`'s HLO counter, while-loop bodies multiplied by their trip counts)
times the steps or batches run; $ is each stage's measured wall time priced by the shipped price table
(`leanjax/audit/prices.json`, CPUs per host core). Every stage writes `<workdir>/stages/<name>.json` when
it finishes; a rerun with the same workdir skips finished stages (and trainings resume from their
checkpoints), so a crash loses at most the stage in progress.
"""

from __future__ import annotations

import collections
import copy
import dataclasses
import json
import math
import os
import re
import time

import jax
import jax.numpy as jnp
import numpy as np
import optuna
from flax import nnx

from leanjax import data, losses, transforms, tune
from leanjax.audit import audit_compiled
from leanjax.audit.prices import PriceTable
from leanjax.audit.remat_auto import Candidate, NoPolicyFits, pick
from leanjax.data.sampling import select_by_score
from leanjax.data.scores import score_source
from leanjax.data.source import to_str
from leanjax.experiments import _launch, _minilm, _report
from leanjax.experiments._minilm import apply_fn_for, arm_params, minilm, quantized, tweets
from leanjax.models import SequenceClassifier, functional
from leanjax.optim import make_optimizer
from leanjax.state import TrainState
from leanjax.step import evaluate, make_eval_step, make_train_step
from leanjax.train import fit
from leanjax.train.async_eval import AsyncEvaluator
from leanjax.transforms.distill import cache_topk, offline_distillation_loss
from leanjax.weights.embeddings import init_embeddings

INPUTS = ("input_ids", "attention_mask")
NUM_LABELS = 3
_WORDS = re.compile(r"[@#]?[a-z0-9_']+")


# ----------------------------------------------------------------------------------------- context


class Context:
    """What the stages share: the config, the data, the loaded MiniLM, and the finished stages' results."""

    def __init__(self, config, workdir: str):
        self.c, self.workdir = config, workdir
        self.results: dict[str, dict] = {}
        self._cache: dict = {}
        self.rate = PriceTable.load().usd_per_hour(jax.devices()[0].device_kind, 1)  # $/hour, this machine

    def dir(self, *parts) -> str:
        path = os.path.join(self.workdir, *parts)
        os.makedirs(path, exist_ok=True)
        return path

    def usd(self, seconds: float) -> float:
        return self.rate * seconds / 3600.0

    def cached(self, key, make):
        if key not in self._cache:
            self._cache[key] = make()
        return self._cache[key]

    # ---- data

    def examples(self):
        """(pool, val, test) example lists: the training pool and a held-out validation slice are disjoint
        random draws from the train split; test is a random subset of the test split."""
        def make():
            c = self.c
            drawn = tweets("train", c.train_examples + c.val_examples, c.seed)
            order = np.random.default_rng(c.seed + 1).permutation(len(drawn))
            val = [drawn[i] for i in order[:c.val_examples]]
            pool = [drawn[i] for i in np.sort(order[c.val_examples:])]
            return pool, val, tweets("test", c.eval_examples, seed=0)
        return self.cached("examples", make)

    def sources(self, tokenizer_key: str, seq_len: int):
        """Tokenized (pool, val, test) with the base or the extended (`tokens` stage) tokenizer."""
        def make():
            tokenizer = self.tokenizer() if tokenizer_key == "base" else self.extended_tokenizer()
            return tuple(data.text_classification_source(examples, tokenizer, seq_len)
                         for examples in self.examples())
        return self.cached(("sources", tokenizer_key, seq_len), make)

    # ---- models

    def pretrained(self, scan_layers: bool):
        """`(model_config, params)`: MiniLM's first `num_layers` layers with a fresh 3-way head."""
        def make():
            model_config, params, tokenizer = minilm(self.c, scan_layers=scan_layers)
            self._cache["tokenizer"] = tokenizer
            return model_config, params
        return self.cached(("pretrained", scan_layers), make)

    def tokenizer(self):
        if "tokenizer" not in self._cache:
            self.pretrained(False)
        return self._cache["tokenizer"]

    def new_tokens(self) -> list[str]:
        return self.results["tokens"]["new_tokens"]

    def extended_tokenizer(self):
        def make():
            import tokenizers

            tok = copy.deepcopy(self.tokenizer())
            tok.add_tokens([tokenizers.AddedToken(w, single_word=True, normalized=True) for w in self.new_tokens()])
            return tok
        return self.cached("extended_tokenizer", make)

    def lean_base(self, num_layers: int):
        """`(model_config, f32 params)`: scanned MiniLM (first `num_layers` layers) with the warm-started
        new-token rows appended to the word embeddings."""
        def make():
            model_config, params = self.pretrained(True)
            table = params["encoder"]["embeddings"]["word"]["embedding"]
            fresh = _subword_rows(self.new_tokens(), self.tokenizer(), np.asarray(table), self.c.seed)
            word = {"embedding": jnp.concatenate([table, jnp.asarray(fresh)])}
            layers = jax.tree.map(lambda x: x[:num_layers], params["encoder"]["layers"])
            encoder = {**params["encoder"], "layers": layers,
                       "embeddings": {**params["encoder"]["embeddings"], "word": word}}
            config = dataclasses.replace(model_config, num_layers=num_layers,
                                         vocab_size=int(word["embedding"].shape[0]))
            return config, {**params, "encoder": encoder}
        return self.cached(("lean_base", num_layers), make)


def _subword_rows(words, tokenizer, table, seed) -> np.ndarray:
    tok = copy.deepcopy(tokenizer)
    tok.no_padding()
    tok.no_truncation()
    return init_embeddings(words, method="subword", tokenizer=tok, vectors=table, rng=seed).table


def qlora(params, c, seed: int):
    """`(params, trainable mask)`: NF4 encoder kernels and embeddings, rank-r LoRA adapters; the head trains
    (the `lora` experiment's `qlora` arm)."""
    return arm_params(params, "qlora", rank=c.lora_rank, alpha=c.lora_alpha, group_size=c.qlora_group_size,
                      seed=seed)


def _optimizer(c, num_steps: int, weight_decay: float = 0.01, name: str = "adamw"):
    """AdamW (or `name`), warmup + cosine, peak rate injected (`learning_rate_scale`): one program for any
    rate."""
    return make_optimizer(name, learning_rate=1.0, total_steps=num_steps,
                          warmup_steps=max(1, num_steps // 10), weight_decay=weight_decay)


def _state(params, tx, seed: int, learning_rate: float, trainable=None) -> TrainState:
    state = TrainState.create(jax.tree.map(jnp.copy, params), tx, jax.random.key(seed), trainable=trainable)
    return tune.set_hyperparams(state, learning_rate_scale=learning_rate)


def _accum(c, batch_size: int) -> int:
    """Gradient-accumulation steps of the lean training steps: micro-batches of `c.micro_batch` examples."""
    if batch_size % c.micro_batch:
        raise ValueError(f"batch size {batch_size} is not a multiple of micro_batch={c.micro_batch}")
    return batch_size // c.micro_batch


def _first_batch(source, batch_size: int, seed: int):
    return next(iter(data.batches(source, batch_size=batch_size, seed=seed)))


def _eval_batch(source, batch_size: int):
    return next(iter(data.eval_batches(source, batch_size)))


def _num_eval_batches(source, batch_size: int) -> int:
    return -(-len(source) // batch_size)


def _compiled_train(step, state, batch):
    """`(compiled step, audit)`: compiled once, measured (peak memory, FLOPs), then run by `fit`."""
    compiled = step.lower(state, batch).compile()
    return compiled, audit_compiled(compiled, state, batch, iters=0)


def _compiled_eval(metrics_fn, params, batch):
    compiled = make_eval_step(transforms.apply(metrics_fn)).lower(params, batch).compile()
    return compiled, audit_compiled(compiled, params, batch, iters=0)


def _train_figures(audit, steps: int, batch_size: int, seq_len: int) -> dict:
    return {"peak_bytes": audit.memory.peak, "memory": dataclasses.asdict(audit.memory),
            "flops_per_step": audit.flops, "flops_method": audit.flops_method, "steps": steps,
            "train_flops": audit.flops * steps, "train_shape": [batch_size, seq_len]}


def _fit(ctx, name, state, step, source, *, num_steps, batch_size, seed, **kw):
    result = fit(state, step, data.batches(source, batch_size=batch_size, seed=seed), num_steps=num_steps,
                 workdir=ctx.dir(name), log_every=max(1, num_steps // 10), progress=ctx.c.progress,
                 desc=f"pipeline/{name}", **kw)
    return _minilm.finished(result)  # SIGTERM: raises _minilm.Preempted, which `run` catches


# ------------------------------------------------------------------------------------------ stages


def stage_brute(ctx: Context) -> dict:
    """Full fine-tune, every weight in f32, unrolled layers, no remat, synchronous evaluation."""
    c, b = ctx.c, ctx.c.brute
    model_config, params = ctx.pretrained(False)
    apply_fn = apply_fn_for(model_config)
    pool, _, test = ctx.sources("base", b.seq_len)
    tx = _optimizer(c, b.num_steps)
    step = make_train_step(losses.classification_loss(apply_fn, inputs=INPUTS), tx)
    state = _state(params, tx, c.seed, b.learning_rate)
    compiled, audit = _compiled_train(step, state, _first_batch(pool, b.batch_size, c.seed))
    eval_step, eval_audit = _compiled_eval(losses.classification_metrics(apply_fn, inputs=INPUTS), params,
                                           _eval_batch(test, c.eval_batch_size))
    ctx._cache["brute_programs"] = (compiled, audit, eval_step)  # scratch runs the same programs
    eval_fn = lambda p: evaluate(eval_step, p, data.eval_batches(test, c.eval_batch_size))  # noqa: E731
    result = _fit(ctx, "brute", state, compiled, pool, num_steps=b.num_steps, batch_size=b.batch_size, seed=c.seed,
                  eval_fn=eval_fn, eval_every=c.eval_every)
    curve = [[r["step"], r["eval_accuracy"]] for r in result.history if "eval_accuracy" in r]
    return {**_train_figures(audit, b.num_steps, b.batch_size, b.seq_len),
            "accuracy": result.last_eval["accuracy"], "eval_curve": curve, "eval": "synchronous",
            "eval_flops_per_batch": eval_audit.flops, "steps_per_s": result.steps_per_s,
            "compile_s": result.compile_s, "params": int(sum(x.size for x in jax.tree.leaves(params))),
            "weight_bytes": transforms.weight_bytes(params), "learning_rate": b.learning_rate,
            "remat": "none", "layers": "unrolled", "resumed_from_step": result.start_step}


def stage_scratch(ctx: Context) -> dict:
    """The brute run's architecture and step program from a random init: what the open weights are worth."""
    c, b = ctx.c, ctx.c.brute
    model_config, pretrained = ctx.pretrained(False)
    apply_fn, params = functional(SequenceClassifier(model_config, NUM_LABELS, rngs=nnx.Rngs(c.seed)))
    params = {**params, "classifier": pretrained["classifier"]}  # the same head init as brute
    pool, _, test = ctx.sources("base", b.seq_len)
    tx = _optimizer(c, b.num_steps)
    step = make_train_step(losses.classification_loss(apply_fn, inputs=INPUTS), tx)
    state = _state(params, tx, c.seed, b.scratch_learning_rate)
    if "brute_programs" in ctx._cache:  # the same step and eval programs as brute (the rate is injected)
        compiled, audit, eval_step = ctx._cache["brute_programs"]
    else:  # brute finished in an earlier process
        compiled, audit = _compiled_train(step, state, _first_batch(pool, b.batch_size, c.seed))
        eval_step = make_eval_step(transforms.apply(losses.classification_metrics(apply_fn, inputs=INPUTS)))
    result = _fit(ctx, "scratch", state, compiled, pool, num_steps=b.num_steps, batch_size=b.batch_size,
                  seed=c.seed, eval_fn=lambda p: evaluate(eval_step, p, data.eval_batches(test, c.eval_batch_size)))
    return {**_train_figures(audit, b.num_steps, b.batch_size, b.seq_len), "accuracy": result.last_eval["accuracy"],
            "learning_rate": b.scratch_learning_rate, "steps_per_s": result.steps_per_s,
            "resumed_from_step": result.start_step}


def stage_tokens(ctx: Context) -> dict:
    """New tokens for the training pool's frequent words that WordPiece splits, ranked by tokens saved."""
    c, t = ctx.c, ctx.c.tokens
    pool, _, _ = ctx.examples()
    texts = [to_str(e["text"]) for e in pool]
    tok = copy.deepcopy(ctx.tokenizer())
    tok.no_padding()
    tok.no_truncation()
    counts = collections.Counter(w for text in texts for w in _WORDS.findall(text.lower()))
    saved = {}
    for word, n in counts.items():
        if n >= t.min_count:
            pieces = len(tok.encode(word, add_special_tokens=False).ids)
            if pieces >= 2:
                saved[word] = n * (pieces - 1)
    new = sorted(saved, key=lambda w: (-saved[w], w))[:t.num_new]
    init = init_embeddings(new, method="subword", tokenizer=tok,
                           vectors=np.asarray(ctx.pretrained(False)[1]["encoder"]["embeddings"]["word"]["embedding"]),
                           rng=c.seed)
    ctx.results["tokens"] = {"new_tokens": new}
    ext = copy.deepcopy(ctx.extended_tokenizer())
    ext.no_padding()
    ext.no_truncation()
    base_len = np.array([len(tok.encode(x).ids) for x in texts])
    new_len = np.array([len(ext.encode(x).ids) for x in texts])
    cover = lambda lens, s: float(np.mean(lens <= s))  # noqa: E731
    return {"new_tokens": new, "num_new": len(new), "examples": new[:20], "init": init.report(),
            "tokens_saved": int(sum(saved[w] for w in new)),
            "mean_tokens": {"base": float(base_len.mean()), "extended": float(new_len.mean())},
            "p99_tokens": {"base": float(np.percentile(base_len, 99)), "extended": float(np.percentile(new_len, 99))},
            "coverage": {"brute_seq_len": c.brute.seq_len, "lean_seq_len": c.lean.seq_len,
                         "base_at_brute_seq": cover(base_len, c.brute.seq_len),
                         "base_at_lean_seq": cover(base_len, c.lean.seq_len),
                         "extended_at_lean_seq": cover(new_len, c.lean.seq_len)}}


def stage_tune(ctx: Context) -> dict:
    """TPE + Hyperband over the QLoRA learning rate on a small proxy (which then scores the pool when selecting)."""
    c, t, lean = ctx.c, ctx.c.tune, ctx.c.lean
    model_config, base = ctx.lean_base(t.proxy_layers)
    params, mask = qlora(base, c, c.seed)
    apply_fn = apply_fn_for(model_config)
    pool, val, _ = ctx.sources("extended", lean.seq_len)
    tx = _optimizer(c, t.max_steps)
    step = make_train_step(transforms.apply(losses.classification_loss(apply_fn, inputs=INPUTS)), tx, trainable=mask,
                           grad_accum_steps=_accum(c, lean.batch_size))
    compiled, audit = _compiled_train(step, _state(params, tx, c.seed, 1e-3, mask),
                                      _first_batch(pool, lean.batch_size, c.seed))
    metrics_fn = losses.classification_metrics(apply_fn, inputs=INPUTS)
    eval_step, eval_audit = _compiled_eval(metrics_fn, params, _eval_batch(val, c.eval_batch_size))
    evaluate_val = lambda p: evaluate(eval_step, p, data.eval_batches(val, c.eval_batch_size))  # noqa: E731
    best = {"value": -1.0, "params": None}

    def objective(trial, sampled):
        state = _state(params, tx, c.seed + trial.number, sampled["learning_rate"], mask)
        result = tune.train_trial(state, compiled, data.batches(pool, batch_size=lean.batch_size, seed=c.seed),
                                  num_steps=t.max_steps, eval_fn=evaluate_val, eval_every=t.min_steps,
                                  report=tune.pruning_reporter(trial, "accuracy"))
        value = result.metrics["accuracy"]
        if not result.stopped and value > best["value"]:
            best.update(value=value, params=result.state.params)
        print(f"[pipeline/tune] trial {trial.number}: lr {sampled['learning_rate']:.2e} -> val accuracy "
              f"{value:.3f} after {result.steps} steps{' (pruned)' if result.stopped else ''}", flush=True)
        return value, result.steps, result.stopped

    # In memory: a crash reruns the (short) study; the trials are cheap and the stage writes nothing half-done.
    study = tune.open_study("pipeline-lr", optuna.storages.InMemoryStorage(), sampler="tpe", pruner="hyperband",
                            seed=c.seed,
                            min_resource=t.min_steps, max_resource=t.max_steps, reduction_factor=t.reduction_factor,
                            n_startup_trials=t.n_startup_trials)
    tune.run_worker(study, objective, space={"learning_rate": tuple(t.learning_rate_range)}, n_trials=t.n_trials)
    trials = tune.finished(study)
    steps = sum(int(tr.user_attrs[tune.STEPS_ATTR]) for tr in trials)
    evals = sum(len(tr.intermediate_values) for tr in trials)
    if best["params"] is None:  # every trial pruned (cannot happen with Hyperband's first trial)
        raise RuntimeError("the tuning study finished no trial; raise tune.n_trials")
    score_batches = 0
    if c.select.fraction < 1.0:  # EL2N of every pool tweet under the best proxy (forward FLOPs as an eval batch)
        scores = score_source(lambda p, batch: transforms.apply(apply_fn)(p, *(batch[n] for n in INPUTS)),
                              best["params"], pool, batch_size=c.eval_batch_size)
        np.save(os.path.join(ctx.dir("stages"), "el2n.npy"), scores["el2n"])
        score_batches = _num_eval_batches(pool, c.eval_batch_size)
    val_batches = _num_eval_batches(val, c.eval_batch_size)
    best_trial = max((tr for tr in trials if tr.value is not None and tr.state.name == "COMPLETE"),
                     key=lambda tr: tr.value)
    return {**_train_figures(audit, steps, lean.batch_size, lean.seq_len),
            "eval_flops": eval_audit.flops * evals * val_batches, "score_flops": eval_audit.flops * score_batches,
            "proxy_layers": t.proxy_layers, "trials": [
                {"number": tr.number, "learning_rate": tr.params["learning_rate"], "state": tr.state.name,
                 "steps": int(tr.user_attrs[tune.STEPS_ATTR]),
                 "value": tr.value if tr.value is not None else max(tr.intermediate_values.values(), default=None)}
                for tr in trials],
            "best_learning_rate": best_trial.params["learning_rate"], "best_val_accuracy": best_trial.value,
            "pruned": sum(tr.state.name == "PRUNED" for tr in trials), "n_trials": len(trials),
            "full_budget_steps": len(trials) * t.max_steps}


def _lean_model(ctx: Context):
    """`(model_config, params, mask, tx, batches source)` of the lean run (its inputs, untrained)."""
    c, lean = ctx.c, ctx.c.lean
    model_config, base = ctx.lean_base(c.num_layers)
    params, mask = qlora(base, c, c.seed)
    pool, _, _ = ctx.sources("extended", lean.seq_len)
    if c.select.fraction < 1.0:
        scores = np.load(os.path.join(ctx.dir("stages"), "el2n.npy"))
        kept = select_by_score(scores, c.select.fraction, c.select.mode, labels=pool.arrays["label"])
        pool = data.ArraySource({k: v[kept] for k, v in pool.arrays.items()})
    return model_config, params, mask, _optimizer(c, lean.num_steps), pool


def stage_lean(ctx: Context) -> dict:
    """QLoRA + remat auto + new tokens + tuned rate + asynchronous evaluation (+ EL2N selection if configured)."""
    c, lean = ctx.c, ctx.c.lean
    model_config, params, mask, tx, train = _lean_model(ctx)
    _, _, test = ctx.sources("extended", lean.seq_len)
    lr = ctx.results["tune"]["best_learning_rate"] * lean.learning_rate_scale
    state = _state(params, tx, c.seed, lr, mask)
    batch = _first_batch(train, lean.batch_size, c.seed)
    budget = int(lean.memory_budget * ctx.results["brute"]["peak_bytes"])
    compiled, candidates = {}, []
    for policy in lean.remat_policies:  # remat `auto`: compile each, pick from the compiled peaks and FLOPs
        apply_fn = apply_fn_for(model_config, scan_layers=True, remat=policy)
        step = make_train_step(transforms.apply(losses.classification_loss(apply_fn, inputs=INPUTS)), tx,
                               trainable=mask, grad_accum_steps=_accum(c, lean.batch_size))
        compiled[policy] = _compiled_train(step, state, batch)
        candidates.append(Candidate(policy, None, compiled[policy][1].memory.peak, compiled[policy][1].flops))
        print(f"[pipeline/lean] remat {policy!r}: peak {candidates[-1].peak_bytes / 2**20:.1f} MiB, "
              f"{candidates[-1].flops / 1e9:.1f} GFLOP/step", flush=True)
    try:
        choice = pick(candidates, budget)
        policy, reason = choice.policy, choice.reason
    except NoPolicyFits as e:  # nothing fits the budget: the smallest peak, said so
        policy = min(candidates, key=lambda cand: cand.peak_bytes).policy
        reason = f"{e}; using the smallest peak, {policy!r}"
    step, audit = compiled[policy]
    metrics_fn = losses.classification_metrics(apply_fn_for(model_config), inputs=INPUTS)
    eval_step = make_eval_step(transforms.apply(metrics_fn))
    eval_fn = lambda p: evaluate(eval_step, p, data.eval_batches(test, c.eval_batch_size))  # noqa: E731
    evaluator = AsyncEvaluator(eval_fn, workdir=ctx.dir("lean"), max_pending=1)
    try:
        result = _fit(ctx, "lean", state, step, train, num_steps=lean.num_steps, batch_size=lean.batch_size,
                      seed=c.seed, eval_every=c.eval_every, **evaluator.fit_hooks())
    finally:
        evaluations = evaluator.close(wait=True)
    final = [e for e in evaluations if e.step == lean.num_steps]
    if not final:
        raise RuntimeError("the asynchronous evaluator returned no result for the final step")
    trainable = sum(int(np.size(x)) for x, m in zip(jax.tree.leaves(params), jax.tree.leaves(mask)) if m)
    return {**_train_figures(audit, lean.num_steps, lean.batch_size, lean.seq_len),
            "accuracy": final[-1].metrics["accuracy"], "eval": "asynchronous",
            "eval_curve": [[e.step, e.metrics["accuracy"]] for e in evaluations],
            "eval_skipped": evaluator.skipped, "learning_rate": lr, "remat": policy, "remat_reason": reason,
            "remat_candidates": [dataclasses.asdict(cand) for cand in candidates], "memory_budget_bytes": budget,
            "train_examples": len(train), "pool_examples": len(ctx.sources("extended", lean.seq_len)[0]),
            "select": f"{c.select.mode} {c.select.fraction:.0%} by EL2N (class balanced)"
            if c.select.fraction < 1 else "all", "trainable_params": trainable,
            "weight_bytes": transforms.weight_bytes(params), "steps_per_s": result.steps_per_s,
            "resumed_from_step": result.start_step}


def _trained_lean(ctx: Context):
    """The lean run's final params (restored from its checkpoint: nothing trains) and its apply_fn."""
    c, lean = ctx.c, ctx.c.lean
    model_config, params, mask, tx, train = _lean_model(ctx)
    apply_fn = apply_fn_for(model_config)
    step = make_train_step(transforms.apply(losses.classification_loss(apply_fn, inputs=INPUTS)), tx, trainable=mask)
    state = _state(params, tx, c.seed, 1.0, mask)
    result = fit(state, step, data.batches(train, batch_size=lean.batch_size, seed=c.seed), num_steps=lean.num_steps,
                 workdir=ctx.dir("lean"), progress=False, desc="pipeline/lean")
    if result.start_step != lean.num_steps:
        raise RuntimeError(f"the lean run's checkpoint in {ctx.dir('lean')} is not final")
    return model_config, apply_fn, result.state.params


def _student(ctx: Context, model_config, teacher_params):
    """`(student_apply, f32 params)`: the teacher's first layers (LoRA merged, NF4 dequantized), unrolled,
    with the vocabulary cut to the most frequent ids of the pool and the position table to the sequence."""
    c, d = ctx.c, ctx.c.distill
    pool, _, _ = ctx.sources("extended", c.lean.seq_len)
    dense = transforms.merge(teacher_params)
    counts = np.bincount(pool.arrays["input_ids"].ravel(), minlength=model_config.vocab_size)
    tok = ctx.extended_tokenizer()
    special = [tok.token_to_id(t) for t in ("[PAD]", "[UNK]", "[CLS]", "[SEP]")]
    counts[special] = counts.max() + 1
    kept = np.sort(np.argsort(-counts, kind="stable")[:d.student_vocab])
    remap = np.full(model_config.vocab_size, np.searchsorted(kept, tok.token_to_id("[UNK]")), np.int32)
    remap[kept] = np.arange(len(kept), dtype=np.int32)
    small = dataclasses.replace(model_config, num_layers=d.student_layers, vocab_size=len(kept),
                                max_position_embeddings=c.lean.seq_len, scan_layers=False, remat="none")
    base_apply = apply_fn_for(small)
    encoder = dense["encoder"]
    layers = {i: jax.tree.map(lambda x, i=i: x[i], encoder["layers"]) for i in range(d.student_layers)}
    emb = encoder["embeddings"]
    embeddings = {**emb, "word": {"embedding": emb["word"]["embedding"][kept]},
                  "position": {"embedding": emb["position"]["embedding"][:c.lean.seq_len]}}
    params = {**dense, "encoder": {**encoder, "layers": layers, "embeddings": embeddings}}
    table = jnp.asarray(remap)

    def student_apply(p, input_ids, attention_mask=None, **kw):
        return base_apply(p, jnp.take(table, input_ids), attention_mask, **kw)

    return student_apply, params, {"vocab": len(kept), "remap_bytes": int(remap.nbytes)}


def stage_distill(ctx: Context) -> dict:
    """Offline KD: the lean teacher's logits cached once over the pool, then a small student trained on them."""
    c, d, lean = ctx.c, ctx.c.distill, ctx.c.lean
    model_config, teacher_apply, teacher = _trained_lean(ctx)
    pool, _, test = ctx.sources("extended", lean.seq_len)
    serve = transforms.apply(lambda p, batch: teacher_apply(p, *(batch[n] for n in INPUTS)))
    first = _eval_batch(pool, c.eval_batch_size)
    logits = jax.jit(serve).lower(teacher, first).compile()
    teacher_audit = audit_compiled(logits, teacher, first, iters=0)
    cache = cache_topk(lambda batch: logits(teacher, batch), data.eval_batches(pool, c.eval_batch_size),
                       len(pool), NUM_LABELS)
    train = data.ArraySource({**pool.arrays, **cache})
    student_apply, params, info = _student(ctx, model_config, teacher)
    tx = _optimizer(c, d.num_steps, name=d.optimizer)
    step = make_train_step(offline_distillation_loss(student_apply, inputs=INPUTS, alpha=d.alpha,
                                                     temperature=d.temperature), tx,
                           grad_accum_steps=_accum(c, d.batch_size))
    state = _state(params, tx, c.seed, d.learning_rate)
    compiled, audit = _compiled_train(step, state, _first_batch(train, d.batch_size, c.seed))
    result = _fit(ctx, "student", state, compiled, train, num_steps=d.num_steps, batch_size=d.batch_size,
                  seed=c.seed)
    eval_step = make_eval_step(losses.classification_metrics(student_apply, inputs=INPUTS))
    accuracy = evaluate(eval_step, result.state.params, data.eval_batches(test, c.eval_batch_size))["accuracy"]
    return {**_train_figures(audit, d.num_steps, d.batch_size, lean.seq_len),
            "cache_flops": teacher_audit.flops * _num_eval_batches(pool, c.eval_batch_size),
            "cache_examples": len(pool), "accuracy": accuracy, "student_layers": d.student_layers,
            "student_vocab": info["vocab"], "remap_bytes": info["remap_bytes"],
            "params": int(sum(x.size for x in jax.tree.leaves(params))),
            "weight_bytes": transforms.weight_bytes(params), "steps_per_s": result.steps_per_s,
            "resumed_from_step": result.start_step}


def _trained_student(ctx: Context):
    c, d = ctx.c, ctx.c.distill
    model_config = ctx.lean_base(c.num_layers)[0]
    pool, _, _ = ctx.sources("extended", c.lean.seq_len)
    # The student's shapes come from the teacher's; its values from its own final checkpoint.
    _, teacher = ctx.lean_base(c.num_layers)
    student_apply, params, _ = _student(ctx, model_config, teacher)
    tx = _optimizer(c, d.num_steps, name=d.optimizer)
    state = TrainState.create(params, tx, jax.random.key(c.seed))
    zeros = {"teacher_values": np.zeros((len(pool), NUM_LABELS), np.float32),
             "teacher_indices": np.zeros((len(pool), NUM_LABELS), np.int32)}
    train = data.ArraySource({**pool.arrays, **zeros})
    step = make_train_step(offline_distillation_loss(student_apply, inputs=INPUTS), tx)
    result = fit(state, step, data.batches(train, batch_size=d.batch_size, seed=c.seed), num_steps=d.num_steps,
                 workdir=ctx.dir("student"), progress=False, desc="pipeline/student")
    if result.start_step != d.num_steps:
        raise RuntimeError(f"the student's checkpoint in {ctx.dir('student')} is not final")
    return student_apply, result.state.params


def stage_serve(ctx: Context) -> dict:
    """The int8 student (W8A8 kernels, int8 embeddings) vs the brute model in f32: accuracy, size, $/1k."""
    c, s, lean = ctx.c, ctx.c.serve, ctx.c.lean
    student_apply, student = _trained_student(ctx)
    int8 = quantized(student, 8, None, serve=True)
    _, _, test = ctx.sources("extended", lean.seq_len)
    brute_config, brute_params = ctx.pretrained(False)  # serving cost does not depend on the trained values
    _, _, brute_test = ctx.sources("base", c.brute.seq_len)
    arms = {"brute": (apply_fn_for(brute_config), brute_params, brute_test),
            "student_int8": (student_apply, int8, test)}
    programs, audits = {}, {}
    for name, (fn, params, source) in arms.items():
        batch = _eval_batch(source, s.batch_size)
        x = tuple(jnp.asarray(batch[n]) for n in INPUTS)
        program = jax.jit(transforms.apply(lambda p, ids, mask, fn=fn: fn(p, ids, mask))).lower(params, *x).compile()
        audits[name] = audit_compiled(program, params, *x, iters=0)
        programs[name] = (program, (params, *x))
    # The served program itself answers the test set: the accuracy of exactly what is timed.
    correct = total = 0
    for batch in data.eval_batches(test, s.batch_size):
        logits = np.asarray(programs["student_int8"][0](int8, *(jnp.asarray(batch[n]) for n in INPUTS)))
        keep = np.asarray(batch["mask"])
        correct += int(((logits.argmax(-1) == batch["label"]) & keep).sum())
        total += int(keep.sum())
    times = {name: [] for name in arms}
    for _ in range(s.timing_rounds + 1):  # alternating calls; the first round warms up
        for name, (program, args) in programs.items():
            t0 = time.perf_counter()
            jax.block_until_ready(program(*args))
            times[name].append(time.perf_counter() - t0)
    out = {}
    for name in arms:
        step_s = float(np.median(times[name][1:]))
        out[name] = {"step_time_s": step_s, "flops_per_request": audits[name].flops / s.batch_size,
                     "usd_per_1k_requests": ctx.usd(step_s) * 1000 / s.batch_size,
                     "weight_bytes": transforms.weight_bytes(arms[name][1]),
                     "peak_bytes": audits[name].memory.peak}
    return {"accuracy": correct / total, "arms": out, "batch_size": s.batch_size,
            "student_f32_bytes": transforms.weight_bytes(student),
            "quantization": "int8: kernels per output channel served W8A8, word/position embeddings per row"}


STAGES = (
    ("brute", "brute force: full fine-tune, f32, no remat, synchronous eval", stage_brute),
    ("scratch", "brute force from scratch: same architecture and budget, random init", stage_scratch),
    ("tokens", "lean: new tokens for frequent tweet words, warm-started from their pieces", stage_tokens),
    ("tune", "lean: TPE + Hyperband learning-rate study on a QLoRA proxy", stage_tune),
    ("lean", "lean: QLoRA fine-tune, remat auto, new tokens, tuned rate, async eval", stage_lean),
    ("distill", "lean: offline distillation into a small student", stage_distill),
    ("serve", "lean: int8 student served vs brute f32", stage_serve),
)


# ----------------------------------------------------------------------------------------- summary


def headline_of(stages: dict) -> tuple[dict, dict]:
    """`(headline, breakdown)` from the stage results (pure: also what the report renders)."""
    brute, serve = stages["brute"], stages["serve"]
    lean_train = ("tune", "lean", "distill")
    flops = {"tune": stages["tune"]["train_flops"] + stages["tune"]["eval_flops"] + stages["tune"]["score_flops"],
             "lean": stages["lean"]["train_flops"],
             "distill": stages["distill"]["train_flops"] + stages["distill"]["cache_flops"]}
    usd = {k: stages[k]["usd"] for k in ("tokens", *lean_train)}
    peak = {k: stages[k]["peak_bytes"] for k in lean_train}
    headline = {
        "brute.accuracy": brute["accuracy"], "lean.accuracy": stages["lean"]["accuracy"],
        "serving.accuracy": serve["accuracy"], "scratch.accuracy": stages["scratch"]["accuracy"],
        "train_memory_ratio": max(peak.values()) / brute["peak_bytes"],
        "train_compute_ratio": sum(flops.values()) / brute["train_flops"],
        "train_cost_ratio": sum(usd.values()) / brute["usd"],
        "serving_size_ratio": serve["arms"]["student_int8"]["weight_bytes"] / serve["arms"]["brute"]["weight_bytes"],
        "serving_cost_ratio": (serve["arms"]["student_int8"]["usd_per_1k_requests"]
                               / serve["arms"]["brute"]["usd_per_1k_requests"]),
    }
    breakdown = {"lean_flops": flops, "lean_usd": usd, "lean_peak_bytes": peak,
                 "train_compute_ratio.lean_run_only": stages["lean"]["train_flops"] / brute["train_flops"],
                 "train_memory_ratio.lean_run_only": stages["lean"]["peak_bytes"] / brute["peak_bytes"]}
    return headline, breakdown


def build(config):
    """`--audit`: the brute-force reference's train and serving steps, the pipeline's "before"."""
    ctx = Context(config, workdir="")
    model_config, params = ctx.pretrained(False)
    apply_fn = apply_fn_for(model_config)
    pool, _, test = ctx.sources("base", config.brute.seq_len)
    return dict(params=params, loss=losses.classification_loss(apply_fn, inputs=INPUTS),
                metrics=losses.classification_metrics(apply_fn, inputs=INPUTS), train=pool, eval=test,
                tx=_optimizer(config, config.brute.num_steps), batch_size=config.brute.batch_size,
                num_steps=config.brute.num_steps)


def run(config, workdir):
    ctx = Context(config, workdir)
    stage_dir = ctx.dir("stages")
    t_run = time.perf_counter()
    print(f"[pipeline] {len(STAGES)} stages; results in {stage_dir}", flush=True)
    for i, (name, what, fn) in enumerate(STAGES, 1):
        path = os.path.join(stage_dir, f"{name}.json")
        if os.path.exists(path):
            with open(path) as f:
                ctx.results[name] = json.load(f)
            print(f"[pipeline {i}/{len(STAGES)}] {name}: done earlier, skipped ({path})", flush=True)
            continue
        print(f"[pipeline {i}/{len(STAGES)}] {name}: {what} ... (run time so far "
              f"{time.perf_counter() - t_run:.0f}s)", flush=True)
        t0 = time.perf_counter()
        try:
            result = fn(ctx)
        except _minilm.Preempted:
            return {"preempted": True}, {}
        wall = time.perf_counter() - t0
        result = {**result, "wall_s": wall, "usd": ctx.usd(wall), "usd_per_hour": ctx.rate}
        ctx.results[name] = result
        partial = f"{path}.{os.getpid()}.tmp"
        with open(partial, "w") as f:
            json.dump(result, f, indent=1, default=_jsonable)
        os.replace(partial, path)
        shown = {k: result[k] for k in ("accuracy", "best_learning_rate", "remat") if k in result}
        print(f"[pipeline {i}/{len(STAGES)}] {name}: done in {wall:.0f}s "
              + " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in shown.items()), flush=True)
    headline, breakdown = headline_of(ctx.results)
    paths = _report.write(workdir, ctx.results, headline, breakdown, config=config.to_dict())
    print(f"[pipeline] report: {paths['md']} and {paths['html']}", flush=True)
    metrics = {"stages": ctx.results, "breakdown": breakdown, "report": paths}
    return metrics, headline


def _jsonable(x):
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (np.floating,)):
        return float(x)
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return str(x)


if __name__ == "__main__":
    raise SystemExit(_launch.main("pipeline", run))
