"""The standard what-if interventions: each builds the transformed step of a `Subject` and audits it.

A subject is a model's loss and serving function with its params, optimizer and one batch of each
kind. Param-tree interventions (LoRA, QLoRA, magnitude pruning, int8/int4 weights, bf16 params and
compute, gradient accumulation) use `leanjax.transforms` and the train step and work on any subject;
model interventions (a remat policy over the layer scan, a half-depth student) need `Subject.rebuild`.
A row that cannot apply says why in terms of the model (`layer_stack`: a CNN has no layer stack to
rematerialise or cut), not of a config key.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from leanjax import transforms
from leanjax.audit.compiled import Audit, audit_compiled
from leanjax.audit.whatif import Unavailable, WhatIf, what_if
from leanjax.state import TrainState
from leanjax.step import make_train_step
from leanjax.transforms.typed import TypedWeight


def dense_kernels(path: str, leaf: Any) -> bool:
    """Matmul weights of Dense layers: `[in, out]` kernels, or `[layers, in, out]` when scanned."""
    return path.endswith("kernel") and getattr(leaf, "ndim", 0) in (2, 3) and "conv" not in path


@dataclasses.dataclass(frozen=True)
class Subject:
    """What the interventions transform.

    `loss(params, batch, rng) -> (loss, metrics)` trains; `serve(params, batch)` answers one batch
    of requests. `rebuild(**options)` returns the subject built with changed model options
    (`remat=`, `scan_layers=`, `dtype=`), raising `Unavailable` for options the model lacks.
    """

    params: Any
    loss: Callable
    serve: Callable
    tx: optax.GradientTransformation
    train_batch: Any
    serve_batch: Any
    rebuild: Callable[..., Subject] | None = None
    targets: Callable[[str, Any], bool] = dense_kernels
    seed: int = 0
    serve_params: Any = None   # what `serve` takes when it is not `params` (a distilled student's own)

    @property
    def serving(self) -> Any:
        """The params the serving step runs on."""
        return self.params if self.serve_params is None else self.serve_params


def audit_train(subject: Subject, name: str, params: Any = None, *, freeze_plain: bool = False,
                grad_accum_steps: int = 1, **audit_kw) -> Audit:
    """The audited train step on `params` (default: the subject's), typed weights allowed.

    Adapters train; with `freeze_plain` the plain arrays (biases, norms) are frozen too.
    """
    params = subject.params if params is None else params
    mask = transforms.trainable(params, freeze_plain=freeze_plain)
    state = TrainState.create(params, subject.tx, jax.random.key(subject.seed), trainable=mask)
    step = make_train_step(transforms.apply(subject.loss), subject.tx, trainable=mask,
                           grad_accum_steps=grad_accum_steps)
    return audit_compiled(step, state, subject.train_batch, name=name, **audit_kw)


def audit_serve(subject: Subject, name: str, params: Any = None, **audit_kw) -> Audit:
    """The audited serving step: one batch of requests through `subject.serve`."""
    params = subject.serving if params is None else params
    return audit_compiled(transforms.apply(subject.serve), params, subject.serve_batch, name=name, **audit_kw)


def _float_weights(subject: Subject) -> None:
    """Interventions that transform float weights need float weights."""
    typed = sorted({type(leaf).__name__ for _, leaf in transforms.leaves_with_paths(subject.params)
                    if isinstance(leaf, TypedWeight)})
    if typed:
        raise Unavailable(f"the model's weights are typed already ({', '.join(typed)}): this intervention "
                          "transforms float weights")


def _lora_params(subject: Subject, rank: int, base: Any = None) -> Any:
    _float_weights(subject)
    key = jax.random.key(subject.seed)
    return transforms.lora(subject.params if base is None else base, subject.targets, rank=rank, key=key,
                           layout=transforms.stacked_io)


def _group_size(subject: Subject, group: int) -> int | None:
    """`group` if it divides every targeted kernel's input axis, else per-channel scales."""
    fan_ins = [leaf.shape[-2] for path, leaf in transforms.leaves_with_paths(subject.params)
               if subject.targets(path, leaf)]
    return group if fan_ins and all(n % group == 0 for n in fan_ins) else None


def lora(subject: Subject, rank: int = 8, **audit_kw) -> Audit:
    """Train rank-`rank` adapters on the frozen matmul weights."""
    return audit_train(subject, f"lora r={rank}", _lora_params(subject, rank), freeze_plain=True, **audit_kw)


def _embedding_tables(group: int) -> Callable[[str, Any], bool]:
    """Frozen embedding tables whose rows split into blocks of `group`."""
    return lambda path, leaf: (path.endswith("embedding") and getattr(leaf, "ndim", 0) == 2
                               and leaf.shape[-1] % group == 0)


def qlora(subject: Subject, rank: int = 8, group: int = 64, **audit_kw) -> Audit:
    """LoRA over NF4 matmul weights (blocks of `group` when they divide the input axis), the frozen
    embedding tables NF4 too (row-wise blocks), as QLoRA stores every frozen weight it can."""
    _float_weights(subject)
    base = transforms.quantize(subject.params, subject.targets, bits=4, scheme="nf4",
                               group_size=_group_size(subject, group))
    tables = _embedding_tables(group)
    if any(tables(path, leaf) for path, leaf in transforms.leaves_with_paths(base)):
        base = transforms.quantize(base, tables, bits=4, scheme="nf4", group_size=group, axis=-1)
    params = _lora_params(subject, rank, base)
    return audit_train(subject, f"qlora r={rank}", params, freeze_plain=True, **audit_kw)


def _rebuilt(subject: Subject, **options) -> Subject:
    if subject.rebuild is None:
        raise Unavailable("this subject cannot be rebuilt with other model options")
    return subject.rebuild(**options)


def layer_stack(params: Any) -> tuple[str, int]:
    """How the model's blocks are held, read from its param paths: ('scanned', L) for params stacked under
    `layers/`, ('unrolled', L) for `layers/0/...`, ('conv', 0) for a CNN, ('none', 0) otherwise."""
    leaves = dict(transforms.leaves_with_paths(params))
    unrolled = {int(m[1]) for p in leaves if (m := re.search(r"(?:^|/)layers/(\d+)/", p))}
    if unrolled:
        return "unrolled", len(unrolled)
    stacked = [x for p, x in leaves.items() if re.search(r"(?:^|/)layers/", p) and getattr(x, "ndim", 0) >= 2]
    if stacked:
        return "scanned", int(stacked[0].shape[0])
    if any("conv" in p for p in leaves):
        return "conv", 0
    return "none", 0


_NO_STACK = {"conv": "a CNN has no layer stack (its convolutions are not a scan of repeated blocks)",
             "none": "the model has no layer stack (no repeated blocks)"}


def remat(subject: Subject, policy: str, **audit_kw) -> Audit:
    """Train with blocks scanned and rematerialised under `policy` (see leanjax.models.remat)."""
    kind, _ = layer_stack(subject.params)
    if kind in _NO_STACK:
        raise Unavailable(f"{_NO_STACK[kind]}: nothing to rematerialise block by block")
    try:
        rebuilt = _rebuilt(subject, remat=policy, scan_layers=True)
    except Unavailable:
        raise Unavailable(f"its {kind} layers were built without a remat option (the leanjax Transformer and "
                          "Decoder take one)") from None
    # Remat bounds memory only inside a scan over blocks; on unrolled layers XLA undoes it.
    return audit_train(rebuilt, f"remat {policy}", **audit_kw)


def remat_auto(subject: Subject, baseline: Audit, policies=("none", "dots", "nothing"), **audit_kw) -> Audit:
    """The `auto` policy (`leanjax.audit.remat_auto`): the fastest policy whose compiled step fits half the
    baseline's peak; the row's name carries the pick."""
    from leanjax.audit.remat_auto import NoPolicyFits, choose_remat

    kind, _ = layer_stack(subject.params)
    if kind in _NO_STACK:
        raise Unavailable(f"{_NO_STACK[kind]}: nothing to rematerialise block by block")
    try:
        rebuilt = {p: _rebuilt(subject, remat=p, scan_layers=True) for p in policies}
    except Unavailable:
        raise Unavailable(f"its {kind} layers were built without a remat option (the leanjax Transformer and "
                          "Decoder take one)") from None

    def build_step(policy, _batch):
        s = rebuilt[policy]
        mask = transforms.trainable(s.params)
        state = TrainState.create(s.params, s.tx, jax.random.key(s.seed), trainable=mask)
        return make_train_step(transforms.apply(s.loss), s.tx, trainable=mask), (state, s.train_batch)

    try:
        choice = choose_remat(build_step, policies, baseline.memory.peak // 2, timing=False)
    except NoPolicyFits as e:
        raise Unavailable(f"no remat policy halves this step's memory ({e})") from None
    return audit_train(rebuilt[choice.policy], f"remat auto (picks {choice.policy})", **audit_kw)


def _to_bf16(tree: Any) -> Any:
    return jax.tree.map(lambda x: x.astype(jnp.bfloat16) if jnp.issubdtype(x.dtype, jnp.floating) else x, tree)


def bf16(subject: Subject, **audit_kw) -> Audit:
    """Train with bfloat16 compute: the model's compute dtype when it has one (params keep their storage
    dtype), else params and float inputs cast to bfloat16 (leanjax layers compute in their operands' dtype)."""
    try:
        return audit_train(_rebuilt(subject, dtype="bfloat16"), "bf16 compute", **audit_kw)
    except Unavailable:
        cast = dataclasses.replace(subject, params=_to_bf16(subject.params), train_batch=_to_bf16(subject.train_batch))
        return audit_train(cast, "bf16 params and compute", **audit_kw)


def grad_accumulation(subject: Subject, steps: int = 2, **audit_kw) -> Audit:
    """The same batch in `steps` micro-batches, gradients summed: activations of one micro-batch."""
    n = jax.tree.leaves(subject.train_batch)[0].shape[0]
    if n % steps:
        raise Unavailable(f"the batch of {n} does not split into {steps} equal micro-batches")
    return audit_train(subject, f"grad accumulation x{steps}", grad_accum_steps=steps, **audit_kw)


def quantized_serving(subject: Subject, bits: int, **audit_kw) -> Audit:
    """Serve with `bits`-bit matmul weights (int8 per channel, or int4 in blocks of 64)."""
    subject = dataclasses.replace(subject, params=subject.serving, serve_params=None)
    _float_weights(subject)
    group = _group_size(subject, 64) if bits == 4 else None
    params = transforms.quantize(subject.params, subject.targets, bits=bits, group_size=group)
    return audit_serve(subject, f"int{bits} weights", params, **audit_kw)


def pruning(subject: Subject, sparsity: float = 0.5, **audit_kw) -> Audit:
    """Fine-tune with `sparsity` of every matmul weight pruned by magnitude (`transforms.keep_masks`: the masks
    live in the optimizer state, pruned weights stay zero). The step stays dense, so its FLOPs do not fall and
    the masks add memory: pruning pays at serving time, 2:4-packed or compacted (the `prune` experiment)."""
    _float_weights(subject)
    masks = transforms.magnitude(subject.targets)(subject.params, jnp.asarray(sparsity, jnp.float32))
    pruned = dataclasses.replace(subject, tx=transforms.keep_masks(subject.tx, masks))
    return audit_train(pruned, f"pruned {sparsity:.0%}", transforms.apply_masks(subject.params, masks), **audit_kw)


def distilled_student(subject: Subject, **audit_kw) -> Audit:
    """The train step of a student with the first half of the layers (the distill experiment's recipe; its
    loss adds the teacher's cached logits, `leanjax.transforms.distill`, a negligible input here)."""
    kind, n = layer_stack(subject.params)
    if kind in _NO_STACK:
        raise Unavailable(f"{_NO_STACK[kind]} to cut in half; a narrower network is a student the experiment "
                          "defines (the distill and prune experiments)")
    if n < 2:
        raise Unavailable(f"the model has {n} layer: no half to keep")
    try:
        rebuilt = _rebuilt(subject, num_layers=n // 2)
    except Unavailable:
        raise Unavailable(f"its {n} {kind} layers were built without a layer-count option") from None
    return audit_train(rebuilt, f"student: {n // 2} of {n} layers", **audit_kw)


def sparse24_serving(subject: Subject, **audit_kw) -> Audit:
    """Serve with every matmul weight 2:4-sparse by magnitude, packed (`transforms.sparse24`: half the values
    plus 2-bit positions)."""
    subject = dataclasses.replace(subject, params=subject.serving, serve_params=None)

    def targets(path, leaf):
        return subject.targets(path, leaf) and leaf.shape[-2] % 4 == 0

    _float_weights(subject)
    if not any(targets(p, x) for p, x in transforms.leaves_with_paths(subject.params)):
        raise Unavailable("no matmul weight has an input axis divisible by 4")
    masks = transforms.nm_masks(subject.params, targets)
    return audit_serve(subject, "2:4 sparse weights", transforms.pack24(subject.params, targets, masks), **audit_kw)


def compacted_serving(subject: Subject, sparsity: float = 0.5, **audit_kw) -> Audit:
    """Serve the model with `sparsity` of its structured units (conv channels, hidden neurons) removed by
    magnitude (`transforms.compact`): smaller dense matmuls, no sparse kernel needed."""
    subject = dataclasses.replace(subject, params=subject.serving, serve_params=None)
    kind, _ = layer_stack(subject.params)
    if kind == "conv":
        groups = transforms.cnn_groups(subject.params)
    elif kind == "unrolled" and set(subject.params) == {"layers"}:
        groups = transforms.mlp_groups(subject.params)
    elif kind == "scanned":
        raise Unavailable("its layers are scanned (stacked): compaction removes units per layer of an "
                          "unrolled model (the prune experiment compacts MiniLM unrolled)")
    else:
        raise Unavailable(f"no unit groups for this model's layout ({kind} layers): compaction knows CNNs, "
                          "MLPs and unrolled BERT-layout encoders")
    _, keep = transforms.structured_masks(subject.params, groups, sparsity)
    params = transforms.compact(subject.params, groups, keep)
    return audit_serve(subject, f"compacted {sparsity:.0%}", params, **audit_kw)


def data_rows(baseline: Audit, *, kept: float = 0.5, trials: int = 27, eta: int = 3, min_fraction: float = 1 / 27
              ) -> list[WhatIf]:
    """Data-side rows: the same step, run fewer or more times.

    - a kept fraction of the data (sampling, curriculum, dedup): `kept` of the run's steps;
    - a Hyperband study of `trials` configurations: in a successive-halving bracket (Li et al. 2018,
      https://arxiv.org/abs/1603.06560) with rungs eta apart from `min_fraction` of a run to a whole run, each
      rung spends `trials * min_fraction` runs, so the study costs `trials * min_fraction * (rungs)` runs
      (4.0 runs for 27 trials at eta 3), against `trials` runs for the same trials trained in full.

    Args:
      baseline: the train step's audit (memory and FLOPs per step are unchanged).
      kept: the data fraction kept.
      trials: the study's size.
      eta: Hyperband's reduction factor.
      min_fraction: the smallest budget, as a fraction of a full run.

    Returns:
      Two rows whose `run_fraction` carries the multiplier.
    """
    rungs = round(np.log(1 / min_fraction) / np.log(eta)) + 1
    study = trials * min_fraction * rungs
    return [WhatIf(f"data kept {kept:.0%}", baseline, run_fraction=kept),
            WhatIf(f"hyperband study of {trials} trials (eta {eta})", baseline, run_fraction=study)]


def _unless_unchanged(row: WhatIf, baseline: Audit) -> WhatIf:
    """A row that compiles to the baseline's program: the option does nothing for this model."""
    if row.audit is not None and row.audit.hlo == baseline.hlo and row.audit.memory == baseline.memory:
        return WhatIf(row.name, unavailable="no effect on this model: the compiled step is unchanged")
    return row


def train_what_ifs(subject: Subject, baseline: Audit, *, remat_policies=("dots", "nothing"),
                   **audit_kw) -> list[WhatIf]:
    """The train-step rows: LoRA, QLoRA, remat policies, bf16, pruning, a distilled student, gradient
    accumulation."""
    rows = [
        what_if("lora r=8", lambda: lora(subject, **audit_kw)),
        what_if("qlora r=8 (nf4)", lambda: qlora(subject, **audit_kw)),
        *(what_if(f"remat {p}", lambda p=p: remat(subject, p, **audit_kw)) for p in remat_policies),
        what_if("remat auto", lambda: remat_auto(subject, baseline, **audit_kw)),
        what_if("bf16 compute", lambda: bf16(subject, **audit_kw)),
        what_if("pruning", lambda: pruning(subject, **audit_kw)),
        what_if("distilled student", lambda: distilled_student(subject, **audit_kw)),
        what_if("grad accumulation x2", lambda: grad_accumulation(subject, 2, **audit_kw)),
    ]
    return [_unless_unchanged(row, baseline) for row in rows]


def serve_what_ifs(subject: Subject, **audit_kw) -> list[WhatIf]:
    """The serving rows: int8 and int4 weights, 2:4-sparse packed weights, 50% of the units compacted away."""
    return [*(what_if(f"int{b} weights", lambda b=b: quantized_serving(subject, b, **audit_kw)) for b in (8, 4)),
            what_if("2:4 sparse weights", lambda: sparse24_serving(subject, **audit_kw)),
            what_if("compacted 50%", lambda: compacted_serving(subject, 0.5, **audit_kw))]


def requests_per_step(subject: Subject) -> int:
    """Requests one serving step answers: the serving batch's size."""
    return jax.tree.leaves(subject.serve_batch)[0].shape[0]
