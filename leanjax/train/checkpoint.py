"""Checkpoints of the whole run: train state, data position and RNG, via orbax.

A checkpoint holds the `TrainState` (params, optimizer state, step, RNG key) and the data iterator's
JSON state, saved asynchronously; orbax writes to a temporary directory and renames on commit, so a run
killed mid-save (SIGKILL, preemption) resumes from the last complete checkpoint. Restoring checks the
stored tree against the expected one first, so a workdir from another model fails with a message that
names each mismatching key and both shapes instead of a tensorstore error.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from leanjax.trees import path_str


class IncompatibleCheckpointError(ValueError):
    pass


def _dtype_name(dtype: Any) -> str:
    try:
        return np.dtype(dtype).name
    except TypeError:  # extended dtypes such as typed PRNG keys
        return str(dtype)


def _shapes(tree: Any) -> dict[str, tuple[tuple[int, ...], str]]:
    flat, _ = jax.tree_util.tree_flatten_with_path(tree)
    return {path_str(p): (tuple(x.shape), _dtype_name(x.dtype)) for p, x in flat}


class Checkpointer:
    """Keeps the newest `keep` checkpoints of a run under `directory`."""

    def __init__(self, directory: str | os.PathLike, keep: int = 3, async_save: bool = True):
        self.directory = os.path.abspath(directory)
        self.manager = ocp.CheckpointManager(
            self.directory,
            item_handlers={"state": ocp.StandardCheckpointHandler(), "data": ocp.JsonCheckpointHandler()},
            options=ocp.CheckpointManagerOptions(max_to_keep=keep, enable_async_checkpointing=async_save,
                                                 cleanup_tmp_directories=True))

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self.manager.all_steps())

    def save(self, step: int, state: Any, data_state: Any = None, force: bool = False) -> None:
        items = {"state": ocp.args.StandardSave(state), "data": ocp.args.JsonSave(data_state or {})}
        self.manager.save(step, args=ocp.args.Composite(**items), force=force)

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def restore(self, target: Any, step: int | None = None) -> tuple[Any, Any, int]:
        """Restore `(state, data_state, step)` into the structure, shapes and shardings of `target`."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {self.directory}")
        self.check_compatible(target, step)
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
        restored = self.manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract), data=ocp.args.JsonRestore()))
        return restored["state"], restored["data"], step

    def check_compatible(self, target: Any, step: int) -> None:
        stored_tree = self.manager.item_metadata(step)["state"].tree
        stored = {k: (tuple(v.shape), _dtype_name(v.dtype)) for k, v in _shapes_meta(stored_tree).items()}
        expected = _shapes(target)
        problems = [f"  missing in checkpoint: {k} (expected {expected[k][0]} {expected[k][1]})"
                    for k in sorted(expected.keys() - stored.keys())]
        problems += [f"  unexpected in checkpoint: {k} {stored[k][0]} {stored[k][1]}"
                     for k in sorted(stored.keys() - expected.keys())]
        problems += [f"  {k}: checkpoint {stored[k][0]} {stored[k][1]}, model {expected[k][0]} {expected[k][1]}"
                     for k in sorted(expected.keys() & stored.keys()) if stored[k] != expected[k]]
        if problems:
            raise IncompatibleCheckpointError(
                f"the checkpoint at step {step} in {self.directory} does not match this run "
                f"({len(problems)} differences):\n" + "\n".join(problems[:20]) +
                ("\n  ..." if len(problems) > 20 else "") +
                "\nUse a fresh --workdir, or delete that directory to start over.")

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


def _shapes_meta(tree: Any, prefix: str = "") -> dict[str, Any]:
    """Flatten orbax's nested-dict metadata tree into '/'-joined paths (as `path_str` names them)."""
    out = {}
    if isinstance(tree, dict):
        for k, v in tree.items():
            out.update(_shapes_meta(v, f"{prefix}/{k}" if prefix else str(k)))
    elif isinstance(tree, (list, tuple)):
        for i, v in enumerate(tree):
            out.update(_shapes_meta(v, f"{prefix}/{i}" if prefix else str(i)))
    elif tree is not None:
        out[prefix] = tree
    return out
