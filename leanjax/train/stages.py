"""A resumable run of named stages, and restoring a finished training run without training.

A multi-stage experiment (the `pipeline`) calls `run_stages`: each stage is a function returning a JSON-able
dict; when it returns, its result (plus its wall time) is written to `<stage_dir>/<name>.json` atomically
(a temporary file, then `os.replace`), so a killed process leaves either the whole result or none. Run again,
finished stages are loaded instead of rerun; an unfinished stage starts over from an empty scratch
directory, so its result does not depend on where the previous process died (the stages are seeded: the
same command gives the same numbers).

`restore_params` reads the params of a finished `fit` run at a given step straight from its orbax
checkpoint: what a later stage needs of an earlier training, with no `fit` call (and so no "resumed from
checkpoint" message or half-run training loop).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from leanjax.train.checkpoint import Checkpointer


@dataclasses.dataclass(frozen=True)
class Stage:
    """One stage: `fn()` returns its result dict; `scratch` (a directory, optional) is emptied (created
    empty) before the stage (re)starts."""
    name: str
    what: str
    fn: Callable[[], dict]
    scratch: str | None = None


def _jsonable(x: Any) -> Any:
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, np.floating):
        return float(x)
    if isinstance(x, np.ndarray):
        return x.tolist()
    return str(x)


def _finite(x: Any) -> Any:
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_finite(v) for v in x]
    return x


def write_json_atomic(path: str, obj: Any) -> None:
    """Write `obj` as JSON to `path` so that readers see the old file or the whole new one, never a part
    (NaN/Inf floats become null)."""
    partial = f"{path}.{os.getpid()}.tmp"
    with open(partial, "w") as f:
        json.dump(_finite(obj), f, indent=1, default=_jsonable)
    os.replace(partial, path)


def run_stages(stages: Sequence[Stage], stage_dir: str, results: dict[str, dict], *, prefix: str = "[stages]",
               log: Callable[[str], None] = lambda s: print(s, flush=True)) -> dict[str, dict]:
    """Run `stages` in order, skipping those whose `<stage_dir>/<name>.json` exists.

    Args:
      stages: the stages; a stage's `fn` may read the results of earlier ones from `results`.
      stage_dir: where the stage JSON files live (created).
      results: filled in place with each stage's result (loaded or computed), `wall_s` added.
      prefix: the progress lines' prefix.
      log: where progress lines go.

    Returns:
      `results`. An exception in a stage propagates; its JSON is not written, so the next run redoes it.
    """
    names = [s.name for s in stages]
    if len(set(names)) != len(names):
        raise ValueError(f"stage names must be unique, got {names}")
    os.makedirs(stage_dir, exist_ok=True)
    t_run = time.perf_counter()
    for i, stage in enumerate(stages, 1):
        path = os.path.join(stage_dir, f"{stage.name}.json")
        tag = f"{prefix} {i}/{len(stages)} {stage.name}"
        if os.path.exists(path):
            with open(path) as f:
                results[stage.name] = json.load(f)
            log(f"{tag}: done earlier, loaded {path}")
            continue
        if stage.scratch is not None:
            shutil.rmtree(stage.scratch, ignore_errors=True)
            os.makedirs(stage.scratch)
        log(f"{tag}: {stage.what} ... (run time so far {time.perf_counter() - t_run:.0f}s)")
        t0 = time.perf_counter()
        result = {**stage.fn(), "wall_s": time.perf_counter() - t0}
        write_json_atomic(path, result)
        results[stage.name] = json.loads(json.dumps(_finite(result), default=_jsonable))  # as a rerun sees it
        log(f"{tag}: done in {result['wall_s']:.0f}s")
    return results


def restore_params(workdir: str, state: Any, step: int) -> Any:
    """The params of the `fit` run in `workdir` at `step`, restored from its checkpoint (nothing trains).

    Args:
      workdir: the `workdir` the run's `fit` was given.
      state: a state of the run's structure (shapes, dtypes, shardings), e.g. its initial `TrainState`.
      step: the checkpointed step to restore (e.g. the one where the run reached its target).

    Returns:
      The restored state's params.
    """
    ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), async_save=False)
    try:
        if step not in ckpt.all_steps():
            raise FileNotFoundError(f"no checkpoint of step {step} in {ckpt.directory} "
                                    f"(it has {ckpt.all_steps()}): the run did not finish there")
        restored, _, _ = ckpt.restore(state, step)
    finally:
        ckpt.close()
    return restored.params
