"""Where metrics go: a JSONL file (the record the tests and plots read), TensorBoard events, a progress bar.

The JSONL log is resume-safe: on restart from step s, rows written after s by the killed run are dropped,
so a resumed run's log equals an uninterrupted run's log row for row.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from typing import Any, Iterable

import numpy as np


def _jsonable(v: Any) -> Any:
    if isinstance(v, (np.generic, np.ndarray)):
        v = v.item() if np.ndim(v) == 0 else np.asarray(v).tolist()
    if isinstance(v, float) and not math.isfinite(v):
        return repr(v)  # 'nan'/'inf' keep the file valid JSON
    return v


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


class MetricWriter:
    """Writes `{step, **scalars}` rows to `metrics.jsonl` and TensorBoard under `workdir`."""

    def __init__(self, workdir: str | os.PathLike, resume_step: int = 0, tensorboard: bool = True):
        self.path = os.path.join(workdir, "metrics.jsonl")
        rows = [r for r in read_jsonl(self.path) if r["step"] <= resume_step]
        with open(self.path, "w") as f:  # drop what a killed run wrote after its last checkpoint
            f.writelines(json.dumps(r) + "\n" for r in rows)
        self.resumed_rows = rows  # what earlier runs logged up to the resume step
        self._file = open(self.path, "a")
        self._tb = None
        if tensorboard:
            from tensorboardX import SummaryWriter

            self._tb = SummaryWriter(os.path.join(workdir, "tb"), purge_step=resume_step + 1)

    def write(self, step: int, scalars: dict[str, Any]) -> None:
        row = {"step": int(step), **{k: _jsonable(v) for k, v in scalars.items()}}
        self._file.write(json.dumps(row) + "\n")
        self._file.flush()
        if self._tb is not None:
            for k, v in scalars.items():
                if isinstance(v, (int, float, np.number)) or np.ndim(v) == 0:
                    self._tb.add_scalar(k, float(v), int(step))

    def close(self) -> None:
        self._file.close()
        if self._tb is not None:
            self._tb.close()


class Progress:
    """A one-line progress display with steps/s and ETA (tqdm on a terminal, periodic lines otherwise)."""

    def __init__(self, total: int, initial: int = 0, desc: str = "train", enabled: bool = True):
        self.enabled = enabled
        self.total, self.n, self.desc = total, initial, desc
        self._bar = None
        self._t0 = None  # the rate is measured from the first update, after compilation
        self._n0, self._last_print = initial, time.perf_counter()
        if enabled and sys.stderr.isatty():
            from tqdm import tqdm

            self._bar = tqdm(total=total, initial=initial, desc=desc, unit="step", dynamic_ncols=True)

    def update(self, n: int, **postfix: Any) -> None:
        if not self.enabled:
            return
        delta, self.n = n - self.n, n
        if self._bar is not None:
            self._bar.update(delta)
            if postfix:
                self._bar.set_postfix({k: f"{v:.4g}" for k, v in postfix.items()}, refresh=False)
            return
        now = time.perf_counter()
        if self._t0 is None:
            self._t0, self._n0, self._last_print = now, n, now
            print(f"[{self.desc}] {n}/{self.total}", file=sys.stderr, flush=True)
        elif now - self._last_print >= 10.0 or n == self.total:
            rate = (n - self._n0) / max(now - self._t0, 1e-9)
            eta = (self.total - n) / rate if rate > 0 else float("inf")
            extra = " ".join(f"{k}={v:.4g}" for k, v in postfix.items())
            print(f"[{self.desc}] {n}/{self.total} {rate:.2f} step/s ETA {eta:.0f}s {extra}",
                  file=sys.stderr, flush=True)
            self._last_print = now

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def mean_rows(rows: Iterable[dict[str, Any]]) -> dict[str, float]:
    rows = list(rows)
    return {k: float(np.mean([r[k] for r in rows])) for k in rows[0]} if rows else {}
