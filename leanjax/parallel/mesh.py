"""Device meshes from a shape spec: named axes (`data`, `fsdp`, `tensor`), one of them may be -1 (fill).

A mesh spec is a mapping `{"data": -1, "fsdp": 2, "tensor": 1}` or the same as a string
`"data=-1,fsdp=2,tensor=1"`; `resolve_shape` fills the -1 axis from the device count, and
`factorizations` lists every shape the planner may try.

Axis types are `Auto` on purpose: leanjax places the state and the batch with `in_shardings` /
`out_shardings` and lets XLA's partitioner propagate everything in between, so a model written without
any sharding annotation (all of `leanjax.models`) runs on any mesh. `Explicit` axes would make every
ambiguous contraction (an fsdp-sharded weight against a data-sharded activation) a trace-time error
that the model code would have to resolve by hand.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence

import jax

AXES = ("data", "fsdp", "tensor")
MeshSpec = Mapping[str, int] | str


def parse_spec(spec: MeshSpec) -> dict[str, int]:
    """`"data=-1,tensor=2"` or a mapping -> an ordered `{axis: size}` dict (sizes unresolved)."""
    if isinstance(spec, str):
        out = {}
        for item in filter(None, (s.strip() for s in spec.split(","))):
            name, eq, size = item.partition("=")
            if not eq:
                raise ValueError(f"mesh spec item {item!r} is not AXIS=SIZE (e.g. 'data=-1,tensor=2')")
            try:
                out[name.strip()] = int(size)
            except ValueError:
                raise ValueError(f"mesh spec item {item!r}: size must be an int") from None
        spec = out
    spec = {str(k): int(v) for k, v in dict(spec).items()}
    if not spec:
        raise ValueError("empty mesh spec: name at least one axis, e.g. 'data=-1'")
    return spec


def resolve_shape(spec: MeshSpec, n_devices: int) -> dict[str, int]:
    """Fill the one -1 axis so the sizes multiply to `n_devices`."""
    shape = parse_spec(spec)
    fill = [k for k, v in shape.items() if v == -1]
    bad = [k for k, v in shape.items() if v < 1 and v != -1]
    if bad or len(fill) > 1:
        raise ValueError(f"mesh {shape}: sizes must be >= 1, with at most one -1 (fill) axis")
    fixed = math.prod(v for v in shape.values() if v != -1)
    if fill:
        if n_devices % fixed:
            raise ValueError(f"mesh {shape}: {n_devices} devices are not divisible by the fixed axes ({fixed})")
        shape[fill[0]] = n_devices // fixed
    if math.prod(shape.values()) != n_devices:
        raise ValueError(f"mesh {shape} has {math.prod(shape.values())} devices; {n_devices} are available")
    return shape


def make_mesh(spec: MeshSpec, devices: Sequence[jax.Device] | None = None) -> jax.sharding.Mesh:
    """A mesh over `devices` (default: all) with Auto axis types (see the module docstring)."""
    devices = list(jax.devices() if devices is None else devices)
    shape = resolve_shape(spec, len(devices))
    names, sizes = tuple(shape), tuple(shape.values())
    return jax.make_mesh(sizes, names, axis_types=(jax.sharding.AxisType.Auto,) * len(names), devices=devices)


def factorizations(n_devices: int, axes: Sequence[str] = AXES) -> list[dict[str, int]]:
    """Every `{axis: size}` with sizes multiplying to `n_devices`, in a stable order."""
    divisors = [d for d in range(1, n_devices + 1) if n_devices % d == 0]
    out = [dict(zip(axes, sizes)) for sizes in itertools.product(divisors, repeat=len(axes))
           if math.prod(sizes) == n_devices]
    return out


def spec_str(shape: Mapping[str, int]) -> str:
    return ",".join(f"{k}={v}" for k, v in shape.items())
