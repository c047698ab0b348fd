"""What the `pipeline` experiment's stages share: the config, the tweets, MiniLM (base and with the mined
tokens), the QLoRA arm, compiled-step audits, the slimmed (unrolled, vocabulary-cut) served models, and the
models later stages rebuild from earlier stages' results (the brute programs, the teacher restored from its
checkpoint without `fit`, the students)."""

from __future__ import annotations

import copy
import dataclasses
import os

import jax
import jax.numpy as jnp
import numpy as np

from leanjax import data, losses, transforms, tune
from leanjax.audit import audit_compiled
from leanjax.audit.prices import PriceTable
from leanjax.audit.remat_auto import Candidate, NoPolicyFits, pick
from leanjax.experiments._minilm import apply_fn_for, arm_params, minilm, tweets
from leanjax.optim import make_optimizer
from leanjax.state import TrainState
from leanjax.step import evaluate, make_eval_step, make_train_step
from leanjax.train.stages import restore_params
from leanjax.transforms.compact import cut_vocab
from leanjax.weights.embeddings import init_embeddings

INPUTS = ("input_ids", "attention_mask")
NUM_LABELS = 3
KERNELS = r".*kernel"
EMBEDDINGS = r"encoder/embeddings/(word|position)/embedding"


class Context:
    """The config, the workdir, the finished stages' results and a per-process cache of loaded things."""

    def __init__(self, config, workdir: str):
        self.c, self.workdir = config, workdir
        self.results: dict[str, dict] = {}
        self._cache: dict = {}
        self.rate = PriceTable.load().usd_per_hour(jax.devices()[0].device_kind, 1)  # $/hour, this machine

    def dir(self, *parts) -> str:
        path = os.path.join(self.workdir, *parts)
        os.makedirs(path, exist_ok=True)
        return path

    def cached(self, key, make):
        if key not in self._cache:
            self._cache[key] = make()
        return self._cache[key]

    def examples(self):
        """(pool, val, test): disjoint random draws of the train split (pool, tuning validation) and a random
        subset of the test split (every reported accuracy)."""
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
            return tuple(data.text_classification_source(ex, tokenizer, seq_len) for ex in self.examples())
        return self.cached(("sources", tokenizer_key, seq_len), make)

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

    def extended_tokenizer(self):
        def make():
            import tokenizers

            tok = copy.deepcopy(self.tokenizer())
            tok.add_tokens([tokenizers.AddedToken(w, single_word=True, normalized=True)
                            for w in self.results["tokens"]["new_tokens"]])
            return tok
        return self.cached("extended_tokenizer", make)

    def lean_base(self, num_layers: int):
        """`(model_config, f32 params)`: scanned MiniLM (first `num_layers` layers), the mined tokens' rows
        warm-started as the mean of their pieces' embeddings and appended to the word table."""
        def make():
            model_config, params = self.pretrained(True)
            table = params["encoder"]["embeddings"]["word"]["embedding"]
            tok = copy.deepcopy(self.tokenizer())
            tok.no_padding()
            tok.no_truncation()
            fresh = init_embeddings(self.results["tokens"]["new_tokens"], method="subword", tokenizer=tok,
                                    vectors=np.asarray(table), rng=self.c.seed).table
            word = {"embedding": jnp.concatenate([table, jnp.asarray(fresh)])}
            layers = jax.tree.map(lambda x: x[:num_layers], params["encoder"]["layers"])
            encoder = {**params["encoder"], "layers": layers,
                       "embeddings": {**params["encoder"]["embeddings"], "word": word}}
            config = dataclasses.replace(model_config, num_layers=num_layers,
                                         vocab_size=int(word["embedding"].shape[0]))
            return config, {**params, "encoder": encoder}
        return self.cached(("lean_base", num_layers), make)


def qlora(params, c, seed: int):
    """`(params, trainable mask)`: the `lora` experiment's `qlora` arm (NF4 kernels and embeddings, LoRA)."""
    return arm_params(params, "qlora", rank=c.lora_rank, alpha=c.lora_alpha, group_size=c.qlora_group_size,
                      seed=seed)


def optimizer(num_steps: int, name: str = "adamw"):
    """Warmup + cosine with the peak rate injected (`learning_rate_scale`): one compiled step for any rate."""
    return make_optimizer(name, learning_rate=1.0, total_steps=num_steps, warmup_steps=max(1, num_steps // 10),
                          weight_decay=0.01)


def state(params, tx, seed: int, learning_rate: float, trainable=None) -> TrainState:
    s = TrainState.create(jax.tree.map(jnp.copy, params), tx, jax.random.key(seed), trainable=trainable)
    return tune.set_hyperparams(s, learning_rate_scale=learning_rate)


def accum(c, batch_size: int) -> int:
    """Gradient-accumulation steps of the lean training steps: micro-batches of `c.micro_batch` examples."""
    if batch_size % c.micro_batch:
        raise ValueError(f"batch size {batch_size} is not a multiple of micro_batch={c.micro_batch}")
    return batch_size // c.micro_batch


def first_batch(source, batch_size: int, seed: int):
    return next(iter(data.batches(source, batch_size=batch_size, seed=seed)))


def eval_batch(source, batch_size: int):
    return next(iter(data.eval_batches(source, batch_size)))


def compiled(fn, *args):
    """`(compiled program, audit)`: compiled once and measured (peak memory, FLOPs per call)."""
    program = fn.lower(*args).compile()
    return program, audit_compiled(program, *args, iters=0)


def train_figures(audit, steps: int, batch_size: int, seq_len: int) -> dict:
    return {"peak_bytes": audit.memory.peak, "flops_per_step": audit.flops, "flops_method": audit.flops_method,
            "steps": steps, "train_flops": audit.flops * steps, "train_shape": [batch_size, seq_len]}


def slim(dense, model_config, num_layers: int, seq_len: int, kept=None):
    """`(model_config, params)` of a served/student model: the first `num_layers` layers of `dense` (scanned
    f32 params) unrolled, the position table cut to `seq_len`, the word table to rows `kept` (all: None)."""
    encoder, emb = dense["encoder"], dense["encoder"]["embeddings"]
    word = emb["word"]["embedding"] if kept is None else emb["word"]["embedding"][kept]
    embeddings = {**emb, "word": {"embedding": word}, "position": {"embedding": emb["position"]["embedding"][:seq_len]}}
    layers = {i: jax.tree.map(lambda x, i=i: x[i], encoder["layers"]) for i in range(num_layers)}
    config = dataclasses.replace(model_config, num_layers=num_layers, vocab_size=int(word.shape[0]),
                                 max_position_embeddings=seq_len, scan_layers=False, remat="none")
    return config, {**dense, "encoder": {**encoder, "layers": layers, "embeddings": embeddings}}


def remapped(apply_fn, remap):
    """`apply_fn` reading old token ids through the vocabulary cut's `remap` table."""
    table = jnp.asarray(remap)
    return lambda p, input_ids, attention_mask=None, **kw: apply_fn(p, jnp.take(table, input_ids), attention_mask, **kw)


def int8(params):
    """Kernels per output channel served W8A8, word/position embeddings int8 per row."""
    params = transforms.quantize(params, EMBEDDINGS, bits=8, axis=-1)
    return transforms.serve_int8(params, KERNELS)


def served_int8(dense, model_config, seq_len: int):
    """`(apply_fn, params)` of the teacher as served: every layer unrolled, position table cut to `seq_len`,
    int8 (`int8`)."""
    config, params = slim(dense, model_config, model_config.num_layers, seq_len)
    return apply_fn_for(config), int8(params)


def served_int8_eval(model_config, seq_len: int, params, test, batch_size: int):
    """`eval_fn(params) -> metrics` of the lean run, judged by the model it will serve (LoRA merged, NF4
    dequantized, int8: `served_int8`), so a run stops when that model reaches the target, not the trained one
    (int8 can cost the last fraction of a point). `params` (typed) give the program's shapes."""
    def served(p):
        return served_int8(transforms.merge(p), model_config, seq_len)
    step = make_eval_step(transforms.apply(losses.classification_metrics(served(params)[0], inputs=INPUTS)))
    return lambda p: evaluate(step, served(p)[1], data.eval_batches(test, batch_size))


def remat_auto(model_config, state, tx, mask, batch, policies, budget: int, accum_steps: int):
    """`(policy, compiled step, its audit, candidates)`: the lean step compiled under each remat policy, the one
    with the fewest FLOPs whose compiled peak fits `budget` picked (`remat_auto.pick`; none fits: the smallest)."""
    programs, candidates = {}, []
    for policy in policies:
        apply_fn = apply_fn_for(model_config, scan_layers=True, remat=policy)
        loss = transforms.apply(losses.classification_loss(apply_fn, inputs=INPUTS))
        programs[policy] = compiled(make_train_step(loss, tx, trainable=mask, grad_accum_steps=accum_steps), state,
                                    batch)
        candidates.append(Candidate(policy, None, programs[policy][1].memory.peak, programs[policy][1].flops))
    try:
        policy = pick(candidates, budget).policy
    except NoPolicyFits:
        policy = min(candidates, key=lambda cand: cand.peak_bytes).policy
    return policy, *programs[policy], candidates


def nf4(params, group_size: int):
    """Kernels and embeddings NF4 in blocks (dequantized on the fly at serving time)."""
    params = transforms.quantize(params, KERNELS, bits=4, scheme="nf4", group_size=group_size)
    return transforms.quantize(params, EMBEDDINGS, bits=4, scheme="nf4", group_size=group_size, axis=-1)


# ------------------------------------------------------------ models the stages share (built from results)


def brute_parts(ctx):
    """The brute programs (compiled once per process: the rate is injected, so every grid run shares them)."""
    def make():
        c, b = ctx.c, ctx.c.brute
        model_config, params = ctx.pretrained(False)
        apply_fn = apply_fn_for(model_config)
        pool = ctx.sources("base", b.seq_len)[0]
        tx = optimizer(b.num_steps)
        step, audit = compiled(make_train_step(losses.classification_loss(apply_fn, inputs=INPUTS), tx),
                               state(params, tx, c.seed, 1e-4), first_batch(pool, b.batch_size, c.seed))
        eval_step = make_eval_step(losses.classification_metrics(apply_fn, inputs=INPUTS))
        return apply_fn, params, tx, step, audit, eval_step
    return ctx.cached("brute", make)


def lean_start(ctx):
    c, lean = ctx.c, ctx.c.lean
    model_config, base = ctx.lean_base(c.num_layers)
    params, mask = qlora(base, c, c.seed)
    tx = optimizer(lean.num_steps)
    return model_config, state(params, tx, c.seed, 1.0, mask), tx, mask


def teacher(ctx):
    """`(model_config, dense params)`: the lean run's params at its teacher step, restored (no `fit`), LoRA
    merged and NF4 dequantized."""
    def make():
        model_config, start, _, _ = lean_start(ctx)
        params = restore_params(ctx.dir("lean"), start, ctx.results["lean"]["teacher_step"])
        return model_config, transforms.merge(params)
    return ctx.cached("teacher", make)


def distill_set(ctx):
    """The pool examples the students see (`num_steps x batch_size`, a seeded draw), in a source."""
    c, d = ctx.c, ctx.c.distill
    pool, _, _ = ctx.sources("extended", c.lean.seq_len)
    n = min(len(pool), d.num_steps * d.batch_size)
    ids = np.sort(np.random.default_rng(c.seed + 2).permutation(len(pool))[:n])
    return data.ArraySource({k: v[ids] for k, v in pool.arrays.items()})


def vocab_cut(ctx, size: int, vocab_size: int):
    """`(kept ids, remap table)`: the pool's `size` most frequent token ids (`cut_vocab`), the rest read as UNK."""
    pool, _, _ = ctx.sources("extended", ctx.c.lean.seq_len)
    tok = ctx.extended_tokenizer()
    return cut_vocab(pool.arrays["input_ids"], vocab_size, size, unk_id=tok.token_to_id("[UNK]"),
                     always=[tok.token_to_id(t) for t in ("[PAD]", "[CLS]", "[SEP]")])


def student(ctx, layers: int):
    """`(apply_fn, f32 params, info)`: the teacher's first `layers` layers, vocabulary cut to the pool's most
    frequent ids (`cut_vocab`), position table cut to the lean sequence length."""
    c = ctx.c
    model_config, dense = teacher(ctx)
    kept, remap = vocab_cut(ctx, c.distill.student_vocab, model_config.vocab_size)
    small, params = slim(dense, model_config, layers, c.lean.seq_len, kept)
    return remapped(apply_fn_for(small), remap), params, {"vocab": len(kept), "remap_bytes": remap.nbytes}


def served(ctx, oracle: dict) -> dict:
    """name -> `(apply_fn, params, test source)` of every served candidate: the `oracle` brute run's f32 params
    at its last step, the teacher in int8 and NF4, each trained student in int8 (all restored, nothing trains)."""
    c, d = ctx.c, ctx.c.distill
    apply_fn, params, tx, _, _, _ = brute_parts(ctx)
    brute = restore_params(ctx.dir(f"brute_{oracle['learning_rate']:.0e}"), state(params, tx, c.seed, 1.0),
                           oracle["steps"])
    model_config, dense = teacher(ctx)
    teacher_config, served_teacher = slim(dense, model_config, model_config.num_layers, c.lean.seq_len)
    test = ctx.sources("extended", c.lean.seq_len)[2]
    arms = {"brute_f32": (apply_fn, brute, ctx.sources("base", c.brute.seq_len)[2]),
            "teacher_int8": (*served_int8(dense, model_config, c.lean.seq_len), test),
            "teacher_nf4": (apply_fn_for(teacher_config), nf4(served_teacher, c.qlora_group_size), test)}
    if c.serve.teacher_vocab:  # the teacher with the word table cut to the ids the pool uses most
        kept, remap = vocab_cut(ctx, c.serve.teacher_vocab, model_config.vocab_size)
        cut_config, cut = slim(dense, model_config, model_config.num_layers, c.lean.seq_len, kept)
        arms[f"teacher_int8_vocab{len(kept)}"] = (remapped(apply_fn_for(cut_config), remap), int8(cut), test)
    for layers in d.student_layers:
        if ctx.results[f"student_L{layers}"].get("skipped"):
            continue
        student_apply, params, _ = student(ctx, layers)
        tx = optimizer(d.num_steps, name=d.optimizer)
        trained = restore_params(ctx.dir(f"student_L{layers}"), state(params, tx, c.seed, 1.0), d.num_steps)
        arms[f"student_L{layers}_int8"] = (student_apply, int8(trained), test)
    return arms


def students_skipped(ctx) -> str | None:
    """Why no student is trained (None: they are). A student is smaller than its teacher and loses accuracy to
    it, so a teacher less than `distill.min_teacher_margin` over the target cannot give one that reaches the
    target: the logit cache and the students' steps would buy no served candidate at the target."""
    margin, need = ctx.results["lean"]["accuracy"] - ctx.c.target_accuracy, ctx.c.distill.min_teacher_margin
    if margin >= need:
        return None
    return f"skipped: teacher {100 * margin:+.1f} points over the target, students need {100 * need:+.1f}"


__all__ = ["INPUTS", "NUM_LABELS", "Context", "apply_fn_for"]
