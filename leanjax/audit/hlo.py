"""Reading an optimized HLO module: what the compiled program does per step.

This module owns the parse of `Compiled.as_text()` and the static analysis built on it: FLOPs,
transcendentals and bytes with `while` loops expanded by their trip counts, the loops themselves,
fusion / custom-call / kernel counts, and collectives (count and operand bytes per step).

Why a counter of our own: XLA's `cost_analysis()` visits a `while` body once, whatever the trip
count, so a model scanned over L layers reports about 1/L of its FLOPs. The per-instruction rules
below are those of XLA's `HloCostAnalysis` (xla/service/hlo_cost_analysis.cc): with every loop
counted once they reproduce `cost_analysis()` exactly on CPU (tests/test_audit.py). They add one
thing XLA's count leaves out: matmuls lowered to library calls (cuBLAS on GPU), which
`cost_analysis()` counts as zero; on an H200 those were 41% of a Transformer step's FLOPs. Only
the public HLO text is read, so this works on every backend.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import json
import math
import re
from collections.abc import Iterator, Mapping

# Bytes per element; sub-byte types are stored one element per byte unless packed, as XLA's
# default shape-size function assumes.
_DTYPE_BYTES = {
    "pred": 1, "s2": 1, "s4": 1, "s8": 1, "u2": 1, "u4": 1, "u8": 1,
    "f4e2m1fn": 1, "f8e3m4": 1, "f8e4m3": 1, "f8e4m3fn": 1, "f8e4m3b11fnuz": 1, "f8e4m3fnuz": 1,
    "f8e5m2": 1, "f8e5m2fnuz": 1, "f8e8m0fnu": 1,
    "s16": 2, "u16": 2, "f16": 2, "bf16": 2,
    "s32": 4, "u32": 4, "f32": 4,
    "s64": 8, "u64": 8, "f64": 8, "c64": 8,
    "c128": 16,
}
# HLO element types as numpy/JAX name them, for the dtypes matmuls run in.
_NUMPY_NAMES = {
    "f64": "float64", "f32": "float32", "bf16": "bfloat16", "f16": "float16",
    "f8e4m3fn": "float8_e4m3fn", "f8e5m2": "float8_e5m2", "s8": "int8", "u8": "uint8",
    "s4": "int4", "u4": "uint4", "s32": "int32", "s16": "int16",
}
_POINTER_BYTES = 8  # a tuple's own buffer is its index table of pointers

_TRANSCENDENTAL = frozenset({
    "exponential", "exponential-minus-one", "log", "log-plus-one", "logistic", "power", "sqrt",
    "cbrt", "rsqrt", "tanh", "sine", "cosine", "tan", "atan2", "erf",
})
_ELEMENTWISE = _TRANSCENDENTAL | frozenset({
    "abs", "add", "and", "bitcast-convert", "ceil", "clamp", "compare", "complex", "convert",
    "count-leading-zeros", "divide", "floor", "imag", "is-finite", "maximum", "minimum", "multiply",
    "negate", "not", "or", "popcnt", "real", "reduce-precision", "remainder", "round-nearest-afz",
    "round-nearest-even", "select", "shift-left", "shift-right-arithmetic", "shift-right-logical",
    "sign", "stochastic-convert", "subtract", "xor",
})
# Instructions that move no data of their own (XLA gives them zero bytes and zero FLOPs).
_FREE = frozenset({
    "parameter", "constant", "get-tuple-element", "bitcast", "after-all", "add-dependency",
    "domain", "opt-barrier", "partition-id", "replica-id",
})
# Not kernels: bookkeeping, or control flow whose bodies are counted instead.
_NOT_KERNELS = _FREE | frozenset({
    "tuple", "while", "call", "conditional", "async-start", "async-update", "async-done",
    "all-reduce-done", "all-gather-done", "collective-permute-done", "copy-done", "send-done",
    "recv-done",
})
COLLECTIVES = (
    "all-reduce", "all-gather", "reduce-scatter", "all-to-all", "ragged-all-to-all",
    "collective-permute", "collective-broadcast",
)
_MATMULS = frozenset({"dot", "convolution"})
# GPU lowers dots to library calls; their FLOPs are those of the dot they replace.
_GEMM_TARGETS = ("__cublas$gemm", "__cublas$lt$matmul", "__cublas$lt$matmul$f8")
_CUDNN_CONV_PREFIX = "__cudnn$conv"


# --------------------------------------------------------------------------------------------
# Parse


@dataclasses.dataclass(frozen=True)
class Shape:
    """An HLO type: an array (`dtype`, `dims`) or a tuple of them (`leaves` has all arrays)."""

    leaves: tuple[tuple[str, tuple[int, ...]], ...]
    is_tuple: bool

    @property
    def elements(self) -> int:
        """Elements of the (first, for tuples) array, as XLA's `ElementsIn` counts them."""
        return math.prod(self.leaves[0][1]) if self.leaves else 0

    @property
    def array_bytes(self) -> int:
        """Bytes of every array leaf together."""
        return sum(math.prod(d) * _DTYPE_BYTES.get(t, 0) for t, d in self.leaves)

    @property
    def buffer_bytes(self) -> int:
        """The size XLA's cost model gives the value itself: a tuple is its pointer table."""
        return _POINTER_BYTES * len(self.leaves) if self.is_tuple else self.array_bytes


_ARRAY = re.compile(r"([a-z][a-z0-9]*)\[([^\]]*)\]")


@functools.lru_cache(maxsize=4096)
def parse_shape(text: str) -> Shape:
    # Layouts ({1,0:T(8,128)}) are dropped first so tiling brackets are not read as dimensions.
    stripped = re.sub(r"\{[^{}]*\}", "", text)
    leaves = []
    for dtype, dims in _ARRAY.findall(stripped):
        sizes = tuple(int(d.lstrip("<=")) for d in dims.split(",") if d.strip())
        leaves.append((dtype, sizes))
    return Shape(tuple(leaves), text.lstrip().startswith("("))


@dataclasses.dataclass(frozen=True)
class Instruction:
    name: str
    shape: Shape
    opcode: str
    operands: tuple[str, ...]  # instruction names; for `constant`, the literal text
    attrs: Mapping[str, str]
    is_root: bool

    def called(self, key: str) -> str | None:
        value = self.attrs.get(key)
        return value.lstrip("%") if value else None

    @property
    def op_name(self) -> str:
        """The JAX source op (from `metadata={op_name=...}`), or the instruction name."""
        m = re.search(r'op_name="([^"]*)"', self.attrs.get("metadata", ""))
        return m.group(1) if m else self.name

    def backend_config(self) -> dict:
        raw = self.attrs.get("backend_config")
        if not raw or not raw.startswith("{"):
            return {}
        try:
            return json.loads(raw)
        except json.JSONDecodeError:
            return {}


@dataclasses.dataclass(frozen=True)
class Computation:
    name: str
    instructions: tuple[Instruction, ...]
    is_entry: bool

    @functools.cached_property
    def by_name(self) -> dict[str, Instruction]:
        return {i.name: i for i in self.instructions}

    @functools.cached_property
    def root(self) -> Instruction:
        return next(i for i in self.instructions if i.is_root)

    @functools.cached_property
    def users(self) -> dict[str, list[tuple[Instruction, int]]]:
        out: dict[str, list[tuple[Instruction, int]]] = collections.defaultdict(list)
        for ins in self.instructions:
            if ins.opcode != "constant":
                for k, operand in enumerate(ins.operands):
                    out[operand].append((ins, k))
        return out

    def parameter(self, index: int) -> Instruction:
        return next(
            i for i in self.instructions if i.opcode == "parameter" and i.operands == (str(index),)
        )


@dataclasses.dataclass(frozen=True)
class Module:
    computations: Mapping[str, Computation]
    entry: str

    def __getitem__(self, name: str) -> Computation:
        return self.computations[name]


def _split_top(text: str, sep: str = ",") -> Iterator[str]:
    """Splits at `sep` outside brackets and quotes."""
    depth, quote, start = 0, "", 0
    for k, ch in enumerate(text):
        if quote:
            if ch == quote and text[k - 1] != "\\":
                quote = ""
        elif ch in "\"'":
            quote = ch
        elif ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif ch == sep and depth == 0:
            yield text[start:k]
            start = k + 1
    yield text[start:]


def _balanced(text: str, start: int) -> int:
    """Index just past the bracket group opening at `text[start]`."""
    depth, quote = 0, ""
    for k in range(start, len(text)):
        ch = text[k]
        if quote:
            if ch == quote:
                quote = ""
        elif ch in "\"'":
            quote = ch
        elif ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
            if depth == 0:
                return k + 1
    raise ValueError(f"unbalanced brackets in HLO text: {text[start:start + 80]!r}")


_HEADER = re.compile(r"^(ENTRY\s+)?%?([^\s(]+)\s*\(.*\)\s*->\s*.*\{\s*$")
_INSTRUCTION = re.compile(r"^\s+(ROOT\s+)?%?([^\s=]+)\s*=\s*(.*)$")
_COMMENT = re.compile(r"/\*.*?\*/")


def _parse_instruction(line: str) -> Instruction:
    m = _INSTRUCTION.match(line)
    assert m is not None
    is_root, name, rest = bool(m.group(1)), m.group(2), m.group(3)
    # The type runs to the first space outside brackets: tuples and TPU tiled layouts nest.
    end = _balanced(rest, 0) if rest.startswith("(") else 0
    while end < len(rest) and rest[end] != " ":
        end = _balanced(rest, end) if rest[end] in "([{" else end + 1
    shape_text, rest = rest[:end], rest[end:].lstrip()
    paren = rest.index("(")
    opcode = rest[:paren]
    close = _balanced(rest, paren)
    inner = rest[paren + 1 : close - 1]
    if opcode == "constant" or opcode == "parameter":
        operands: tuple[str, ...] = (inner.strip(),)
    else:
        # Operands print as `%name`, or as `type %name` in older text; keep the name.
        operands = tuple(o.split()[-1].lstrip("%") for o in _split_top(inner) if o.strip())
    attrs = {}
    for item in _split_top(rest[close:]):
        key, eq, value = item.strip().partition("=")
        if eq:
            attrs[key] = value
    return Instruction(name, parse_shape(shape_text), opcode, operands, attrs, is_root)


def parse_module(text: str) -> Module:
    """Parses `Compiled.as_text()` (an optimized HLO module) into computations."""
    computations: dict[str, Computation] = {}
    entry = None
    name, is_entry, body = None, False, []
    for raw in text.splitlines():
        line = _COMMENT.sub("", raw)
        if name is None:
            m = _HEADER.match(line)
            if m:
                name, is_entry, body = m.group(2), bool(m.group(1)), []
        elif line.strip() == "}":
            computations[name] = Computation(name, tuple(body), is_entry)
            entry = name if is_entry else entry
            name = None
        elif _INSTRUCTION.match(line):
            body.append(_parse_instruction(line))
    if entry is None:
        raise ValueError("no ENTRY computation found: pass the text of an HLO module")
    return Module(computations, entry)


# --------------------------------------------------------------------------------------------
# Costs (the rules of XLA's HloCostAnalysis)


@dataclasses.dataclass(frozen=True)
class Cost:
    flops: float = 0.0
    transcendentals: float = 0.0
    bytes_accessed: float = 0.0
    library_flops: float = 0.0  # the part of `flops` done by library calls (cuBLAS, cuDNN)

    def __add__(self, other: Cost) -> Cost:
        return Cost(*map(sum, zip(dataclasses.astuple(self), dataclasses.astuple(other))))

    def scale(self, k: float) -> Cost:
        return Cost(*(k * a for a in dataclasses.astuple(self)))

    def max(self, other: Cost) -> Cost:
        return Cost(*map(max, zip(dataclasses.astuple(self), dataclasses.astuple(other))))


def _ints(text: str) -> list[int]:
    return [int(v) for v in re.findall(r"-?\d+", text)]


def _branches(ins: Instruction) -> list[str]:
    listed = re.findall(r"%?([^\s,{}%]+)", ins.attrs.get("branch_computations", ""))
    return listed or [ins.called("true_computation"), ins.called("false_computation")]


def _dot_flops(lhs: Shape, out: Shape, lhs_contracting: list[int]) -> float:
    width = math.prod(lhs.leaves[0][1][d] for d in lhs_contracting)
    return 2.0 * out.elements * width


def _parse_window(text: str, rank: int) -> list[tuple[int, int, int, int, int]]:
    """(size, stride, low padding, lhs dilation, rhs dilation) per spatial dimension."""
    fields = dict(item.split("=", 1) for item in text.strip("{}").split() if "=" in item)

    def per_dim(key: str, default: str) -> list[str]:
        return fields.get(key, "x".join([default] * rank)).split("x")

    return list(zip(
        (int(v) for v in per_dim("size", "1")),
        (int(v) for v in per_dim("stride", "1")),
        (int(p.split("_")[0]) for p in per_dim("pad", "0_0")),
        (int(v) for v in per_dim("lhs_dilate", "1")),
        (int(v) for v in per_dim("rhs_dilate", "1")),
    ))


def _conv_flops(ins: Instruction, lhs: Shape, rhs: Shape) -> float:
    """A convolution's FLOPs, counting only kernel taps that land on the (dilated) input."""
    lhs_dims, rhs_dims, out_dims = lhs.leaves[0][1], rhs.leaves[0][1], ins.shape.leaves[0][1]
    lhs_labels, rest = ins.attrs["dim_labels"].split("_", 1)
    rhs_labels, out_labels = rest.split("->")
    spatial = [c for c in lhs_labels if c.isdigit()]
    positions = 1
    for s, (_, stride, pad_low, lhs_dilate, rhs_dilate) in zip(
        spatial, _parse_window(ins.attrs.get("window", ""), len(spatial))
    ):
        size_in = lhs_dims[lhs_labels.index(s)]
        taps = (
            (o * stride - pad_low + t * rhs_dilate)
            for t in range(rhs_dims[rhs_labels.index(s)])
            for o in range(out_dims[out_labels.index(s)])
        )
        positions *= sum(u % lhs_dilate == 0 and 0 <= u // lhs_dilate < size_in for u in taps)
    groups = int(ins.attrs.get("feature_group_count", "1"))
    batch_groups = int(ins.attrs.get("batch_group_count", "1"))
    multiply_adds = (
        lhs_dims[lhs_labels.index("f")] // groups
        * out_dims[out_labels.index("f")]
        * (lhs_dims[lhs_labels.index("b")] // batch_groups)
        * positions
    )
    return 2.0 * multiply_adds


def _gemm_contracting(ins: Instruction) -> list[int] | None:
    config = ins.backend_config()
    dnums = (config.get("gemm_backend_config") or config).get("dot_dimension_numbers")
    return [int(d) for d in dnums["lhs_contracting_dimensions"]] if dnums else None


class _Analyzer:
    """Costs of the computations of one module. With `expand`, a loop costs trips x its body."""

    def __init__(self, module: Module):
        self.module = module
        self._memo: dict[tuple[str, bool], Cost] = {}

    def trip_count(self, comp: Computation, loop: Instruction) -> tuple[int | None, str]:
        known = loop.backend_config().get("known_trip_count")
        if known is not None:
            return int(known["n"]), "known_trip_count"
        return self._trip_from_condition(comp, loop), "condition"

    def _trip_from_condition(self, comp: Computation, loop: Instruction) -> int | None:
        """`i < N` on a loop-carried counter that starts at a constant (and steps by one)."""
        cond = self.module[loop.called("condition")]
        root = cond.root
        if root.opcode == "fusion":  # XLA wraps the compare in a one-op fusion
            inner = self.module[root.called("calls")]
            if inner.root.opcode != "compare":
                return None
            lhs_k, rhs_k = (int(inner.by_name[o].operands[0]) for o in inner.root.operands)
            lhs, rhs, compare = root.operands[lhs_k], root.operands[rhs_k], inner.root
        elif root.opcode == "compare":
            (lhs, rhs), compare = root.operands, root
        else:
            return None
        counter, limit = cond.by_name[lhs], cond.by_name[rhs]
        init = comp.by_name[loop.operands[0]]
        if (compare.attrs.get("direction") != "LT" or limit.opcode != "constant"
                or counter.opcode != "get-tuple-element" or init.opcode != "tuple"):
            return None
        start = comp.by_name[init.operands[int(counter.attrs["index"])]]
        while start.opcode == "copy":
            start = comp.by_name[start.operands[0]]
        if start.opcode != "constant":
            return None
        return max(_ints(limit.operands[0])[0] - _ints(start.operands[0])[0], 0)

    def cost(self, name: str, expand: bool) -> Cost:
        key = (name, expand)
        if key not in self._memo:
            comp = self.module[name]
            self._memo[key] = sum((self.instruction_cost(comp, i, expand) for i in comp.instructions), Cost())
        return self._memo[key]

    def matmul_flops(self, comp: Computation, ins: Instruction) -> float:
        """FLOPs of a dot, convolution or library matmul/convolution call; 0 for anything else."""
        if ins.opcode not in _MATMULS and ins.opcode != "custom-call":
            return 0.0
        operands = [comp.by_name[o].shape for o in ins.operands]
        if ins.opcode == "dot":
            return _dot_flops(operands[0], ins.shape, _ints(ins.attrs.get("lhs_contracting_dims", "")))
        if ins.opcode == "convolution":
            return _conv_flops(ins, operands[0], operands[1])
        if ins.opcode == "custom-call":
            target = ins.attrs.get("custom_call_target", "").strip('"')
            if target in _GEMM_TARGETS and (contracting := _gemm_contracting(ins)) is not None:
                # The call returns (result, workspace): the result is the first element.
                return _dot_flops(operands[0], Shape(ins.shape.leaves[:1], False), contracting)
            if target.startswith(_CUDNN_CONV_PREFIX) and "dim_labels" in ins.attrs:
                return _conv_flops(ins, operands[0], operands[1])
        return 0.0

    def instruction_cost(self, comp: Computation, ins: Instruction, expand: bool) -> Cost:
        op, out = ins.opcode, ins.shape
        if op in _FREE:
            return Cost()
        operands = [comp.by_name[o].shape for o in ins.operands]
        default_bytes = out.buffer_bytes + sum(s.buffer_bytes for s in operands)
        if op in _TRANSCENDENTAL:
            return Cost(transcendentals=out.elements, bytes_accessed=default_bytes)
        if op in _ELEMENTWISE:
            return Cost(flops=out.elements, bytes_accessed=default_bytes)
        if op in _MATMULS:
            return Cost(flops=self.matmul_flops(comp, ins), bytes_accessed=default_bytes)
        if op == "custom-call":
            flops = self.matmul_flops(comp, ins)
            return Cost(flops=flops, bytes_accessed=default_bytes, library_flops=flops)
        if op == "fusion":
            fused = self.module[ins.called("calls")]
            return dataclasses.replace(self.cost(fused.name, expand), bytes_accessed=self._fusion_bytes(ins, fused))
        if op == "while":
            trips = self.trip_count(comp, ins)[0] if expand else 1
            body = self.cost(ins.called("body"), expand) + self.cost(ins.called("condition"), expand)
            return body.scale(trips if trips is not None else 1)
        if op in ("call", "async-start"):
            return self.cost(ins.called("to_apply" if op == "call" else "calls"), expand)
        if op == "conditional":
            branches = [self.cost(b, expand) for b in _branches(ins)]
            return functools.reduce(Cost.max, branches)
        if op in ("reduce", "reduce-window", "map", "scatter", "select-and-scatter"):
            return self._applications(ins, operands, default_bytes, expand)
        if op in ("all-reduce", "all-reduce-start"):
            # XLA assumes two participants: one addition per output element.
            return Cost(flops=sum(math.prod(d) for _, d in out.leaves), bytes_accessed=default_bytes)
        if op == "sort":
            n = operands[0].elements
            return Cost(flops=n * math.ceil(math.log2(n)) if n > 1 else 0, bytes_accessed=default_bytes)
        if op in ("rng", "rng-bit-generator"):
            return Cost(transcendentals=sum(math.prod(d) for _, d in out.leaves), bytes_accessed=default_bytes)
        if op == "tuple":
            return Cost(bytes_accessed=out.buffer_bytes)
        # Slicing ops touch the slice, not the whole operand.
        if op in ("slice", "dynamic-slice"):
            return Cost(bytes_accessed=2 * out.buffer_bytes + sum(s.buffer_bytes for s in operands[1:]))
        if op == "dynamic-update-slice":
            return Cost(bytes_accessed=2 * operands[1].buffer_bytes + sum(s.buffer_bytes for s in operands[2:]))
        if op == "gather":
            return Cost(bytes_accessed=2 * out.buffer_bytes + operands[1].buffer_bytes)
        return Cost(bytes_accessed=default_bytes)

    def _applications(self, ins: Instruction, operands: list[Shape], default_bytes: int, expand: bool) -> Cost:
        """Ops that apply a small computation many times: its cost times the applications."""
        op, out = ins.opcode, ins.shape
        if op == "select-and-scatter":
            taps = math.prod(w[0] for w in _parse_window(ins.attrs["window"], len(operands[0].leaves[0][1])))
            source = operands[1].elements
            total = (self.cost(ins.called("select"), expand).scale(source * (taps - 1))
                     + self.cost(ins.called("scatter"), expand).scale(source))
            return dataclasses.replace(total, bytes_accessed=default_bytes)
        if op == "reduce":
            applications = operands[0].elements - out.elements
        elif op == "reduce-window":
            taps = math.prod(w[0] for w in _parse_window(ins.attrs["window"], len(operands[0].leaves[0][1])))
            applications = (taps - 1) * out.elements
        elif op == "map":
            applications = out.elements
        else:  # scatter(operands..., indices, updates...): the combiner runs once per update
            n = (len(operands) - 1) // 2
            applications = operands[n + 1].elements
            default_bytes = 3 * sum(s.buffer_bytes for s in operands[n + 1 :]) + operands[n].buffer_bytes
        per = self.cost(ins.called("to_apply"), expand)
        return Cost(per.flops * applications, per.transcendentals * applications, default_bytes)

    def _fusion_bytes(self, fusion: Instruction, fused: Computation) -> float:
        """Bytes a fusion reads and writes: intermediates stay on chip; slices read their part."""
        root = fused.root
        written = 0
        for leaf in [fused.by_name[o] for o in root.operands] if root.opcode == "tuple" else [root]:
            # A dynamic-update-slice writes its update in place; the rest of the buffer is untouched.
            target = fused.by_name[leaf.operands[1]] if leaf.opcode == "dynamic-update-slice" else leaf
            written += target.shape.array_bytes
        read = sum(self._parameter_read_bytes(fused, fused.parameter(k)) for k in range(len(fusion.operands)))
        return float(written + read)

    @staticmethod
    def _parameter_read_bytes(fused: Computation, param: Instruction) -> int:
        size, shared = 0, False
        for user, k in fused.users.get(param.name, []):
            if user.opcode == "slice" or (user.opcode == "dynamic-slice" and k == 0):
                size += user.shape.buffer_bytes
            elif user.opcode == "dynamic-update-slice" and k == 0:
                continue  # the buffer updated in place: its untouched part is not read
            elif user.opcode in ("broadcast", "reshape"):
                size += param.shape.buffer_bytes
            elif not shared:
                shared = True  # all other readers share one read of the whole operand
                size += param.shape.buffer_bytes
        return size


# --------------------------------------------------------------------------------------------
# The report


@dataclasses.dataclass(frozen=True)
class Loop:
    """One `while` loop: its trip count (None when unknown) and the FLOPs of one iteration."""

    name: str
    op_name: str  # the JAX op it came from, e.g. "jit(step)/transpose(jvp())/while"
    trip_count: int | None
    trip_source: str  # "known_trip_count" (XLA's loop analysis) or "condition" (i < N read here)
    depth: int  # 0 in the entry computation, 1 inside one loop, ...
    body_flops: float  # inner loops expanded


@dataclasses.dataclass(frozen=True)
class Collective:
    """One kind of collective: instructions executed per step and the bytes of their operands."""

    count: int
    operand_bytes: float


@dataclasses.dataclass(frozen=True)
class HloAnalysis:
    """Static figures of one optimized HLO module, per device.

    `*_once` count each loop body once, as XLA's `cost_analysis()` does; the others expand loops by
    their trip counts: the work of one step. A loop whose trip count is unknown counts once.
    """

    flops_once: float
    flops: float
    library_flops_once: float  # the part of `flops_once` in library calls (cuBLAS...)
    transcendentals_once: float
    transcendentals: float
    bytes_once: float
    bytes_accessed: float
    loops: tuple[Loop, ...]
    fusions: Mapping[str, int]  # fusion kind -> fusions in the program text
    custom_calls: Mapping[str, int]  # target -> calls in the program text
    kernels: int  # launched ops in the program text: fusions, custom calls, unfused ops
    kernels_per_step: int  # the same, loop bodies counted once per iteration
    collectives: Mapping[str, Collective]  # per step
    matmul_flops: Mapping[str, float]  # dot and convolution FLOPs per step, by operand dtype

    @property
    def unknown_trip_counts(self) -> int:
        return sum(loop.trip_count is None for loop in self.loops)

    @property
    def matmul_dtype(self) -> str | None:
        """The dtype most matmul FLOPs multiply in: the peak that bounds this program."""
        return max(self.matmul_flops, key=self.matmul_flops.get) if self.matmul_flops else None


def _fusion_kind(ins: Instruction) -> str:
    config = ins.backend_config()
    label = (config.get("fusion_backend_config") or config.get("fusion_config") or {}).get("kind")
    kind = ins.attrs.get("kind", "?")
    return f"{kind}({label})" if label else kind


def _collective_kind(module: Module, ins: Instruction) -> str | None:
    op = ins.opcode.removesuffix("-start")
    if op in COLLECTIVES:
        return op
    if ins.opcode == "async-start":
        wrapped = module[ins.called("calls")].root.opcode
        return wrapped if wrapped in COLLECTIVES else None
    return None


def analyze(text_or_module: str | Module) -> HloAnalysis:
    """Analyses an optimized HLO module (the text of `Compiled.as_text()`).

    Args:
      text_or_module: the HLO text, or a module already parsed.

    Returns:
      An `HloAnalysis`: FLOPs and bytes (while-loop bodies times their trip counts), fusions and kernels,
      collectives, loops.
    """
    module = parse_module(text_or_module) if isinstance(text_or_module, str) else text_or_module
    an = _Analyzer(module)
    once, expanded = an.cost(module.entry, False), an.cost(module.entry, True)

    loops: list[Loop] = []
    fusions: collections.Counter[str] = collections.Counter()
    custom_calls: collections.Counter[str] = collections.Counter()
    matmul: collections.Counter[str] = collections.Counter()
    collectives: dict[str, Collective] = {}
    kernels, kernels_per_step = 0, 0
    seen: set[str] = set()

    def visit(comp: Computation, multiplier: int, depth: int, fused: bool) -> None:
        """Walks what executes; a `fused` computation runs inside one kernel of its caller."""
        nonlocal kernels, kernels_per_step
        first = comp.name not in seen
        seen.add(comp.name)
        for ins in comp.instructions:
            flops = an.matmul_flops(comp, ins)
            if flops:
                dtype = comp.by_name[ins.operands[0]].shape.leaves[0][0]
                matmul[_NUMPY_NAMES.get(dtype, dtype)] += multiplier * flops
            if not fused and ins.opcode not in _NOT_KERNELS:
                kernels += first
                kernels_per_step += multiplier
                if first and ins.opcode == "fusion":
                    fusions[_fusion_kind(ins)] += 1
                if first and ins.opcode == "custom-call":
                    custom_calls[ins.attrs.get("custom_call_target", "?").strip('"')] += 1
            if not fused and (kind := _collective_kind(module, ins)) is not None:
                previous = collectives.get(kind, Collective(0, 0.0))
                operand_bytes = sum(comp.by_name[o].shape.array_bytes for o in ins.operands)
                collectives[kind] = Collective(previous.count + multiplier,
                                               previous.operand_bytes + multiplier * operand_bytes)
            if ins.opcode == "fusion":
                visit(module[ins.called("calls")], multiplier, depth, True)
            elif ins.opcode == "while":
                trips, source = an.trip_count(comp, ins)
                body = module[ins.called("body")]
                loops.append(Loop(ins.name, ins.op_name, trips, source, depth, an.cost(body.name, True).flops))
                visit(body, multiplier * (trips if trips is not None else 1), depth + 1, fused)
            elif ins.opcode in ("call", "async-start"):
                visit(module[ins.called("to_apply" if ins.opcode == "call" else "calls")], multiplier, depth, fused)
            elif ins.opcode == "conditional":
                for branch in _branches(ins):
                    visit(module[branch], multiplier, depth, fused)

    visit(module[module.entry], 1, 0, False)
    return HloAnalysis(
        flops_once=once.flops,
        flops=expanded.flops,
        library_flops_once=once.library_flops,
        transcendentals_once=once.transcendentals,
        transcendentals=expanded.transcendentals,
        bytes_once=once.bytes_accessed,
        bytes_accessed=expanded.bytes_accessed,
        loops=tuple(loops),
        fusions=dict(fusions),
        custom_calls=dict(custom_calls),
        kernels=kernels,
        kernels_per_step=kernels_per_step,
        collectives=dict(sorted(collectives.items())),
        matmul_flops=dict(matmul),
    )
