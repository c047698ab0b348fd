"""Run one command as several JAX processes on this machine: the multi-host code path, for free.

    python -m leanjax.parallel.launch --processes 2 --devices-per-process 4 -- \\
        python -m leanjax.experiments.baseline --config configs/baseline/default.py:tiny \\
        --config.data_parallel=true --workdir runs/baseline/2proc

Each process gets `JAX_COORDINATOR_ADDRESS` (127.0.0.1 and a free port), `JAX_NUM_PROCESSES`,
`JAX_PROCESS_ID` (which `leanjax.parallel.initialize` turns into `jax.distributed.initialize`), CPU devices
only (`JAX_PLATFORMS=cpu`, `JAX_NUM_CPU_DEVICES`) and gloo collectives over loopback: what a TPU pod slice
or a SLURM job does with one process per host, on one machine, the way MaxText and Levanter users debug
multi-host before paying for a pod. Sharded steps, per-process data, orbax checkpoints written by every
process and the resume path all run for real.

Output lines are prefixed `[p<i>]`. When one process fails (an exception, a kill), the launcher says which
and how, stops the others (SIGTERM, then SIGKILL after `--grace-s`: a process blocked in a collective
with a dead peer never returns on its own) and exits non-zero; the same command then resumes from the
last complete checkpoint.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from typing import TextIO


def _free_port() -> int:
    import portpicker

    return portpicker.pick_unused_port()


def process_env(process_id: int, *, processes: int, devices_per_process: int, port: int,
                base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of local process `process_id` of a `processes`-process CPU run.

    Args:
      process_id: 0 .. processes - 1.
      processes: how many processes join the run.
      devices_per_process: simulated CPU devices in each.
      port: the coordinator's port on 127.0.0.1 (process 0 serves it).
      base: the environment to extend (default: this process's).

    Returns:
      The child's environment.
    """
    env = dict(os.environ if base is None else base)
    env.update(JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", JAX_NUM_PROCESSES=str(processes),
               JAX_PROCESS_ID=str(process_id), JAX_PLATFORMS="cpu", JAX_NUM_CPU_DEVICES=str(devices_per_process),
               JAX_CPU_COLLECTIVES_IMPLEMENTATION="gloo", PYTHONUNBUFFERED="1")
    return env


def _describe(code: int) -> str:
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with code {code}"


def _pump(stream, prefix: str, out: TextIO, lock: threading.Lock) -> None:
    for line in stream:
        with lock:
            out.write(f"{prefix} {line}" if line.endswith("\n") else f"{prefix} {line}\n")
            out.flush()


def launch(command: Sequence[str], *, processes: int, devices_per_process: int, port: int | None = None,
           grace_s: float = 10.0, out: TextIO | None = None) -> int:
    """Run `command` as `processes` local JAX processes and wait for all of them.

    Args:
      command: the program and its arguments (the same for every process).
      processes: the number of processes (>= 1).
      devices_per_process: CPU devices per process (>= 1).
      port: the coordinator port (default: a free one).
      grace_s: seconds the others get to stop after one fails, before SIGKILL.
      out: where the prefixed output goes (default: stdout).

    Returns:
      0 when every process succeeded, else the exit code of the lowest-numbered process that failed
      (128 + signal for a kill).
    """
    if processes < 1 or devices_per_process < 1:
        raise ValueError(f"need processes >= 1 and devices_per_process >= 1, got {processes} and "
                         f"{devices_per_process}")
    if not command:
        raise ValueError("no command to launch: put it after `--`")
    out = sys.stdout if out is None else out
    port = _free_port() if port is None else port
    lock = threading.Lock()
    children, pumps = [], []
    for i in range(processes):
        child = subprocess.Popen(list(command), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                 env=process_env(i, processes=processes, devices_per_process=devices_per_process,
                                                 port=port))
        children.append(child)
        with lock:
            out.write(f"[launch] process {i} pid {child.pid}\n")
            out.flush()
        pump = threading.Thread(target=_pump, args=(child.stdout, f"[p{i}]", out, lock), daemon=True)
        pump.start()
        pumps.append(pump)

    failed: list[tuple[int, int]] = []
    try:
        while True:
            codes = [c.poll() for c in children]
            if any(c not in (None, 0) for c in codes):
                # A peer's death makes the others abort in their next collective: wait a moment so the
                # report names every process that went down, the cause among them.
                time.sleep(1.0)
                failed = [(i, c.poll()) for i, c in enumerate(children) if c.poll() not in (None, 0)]
                break
            if all(c == 0 for c in codes):
                break
            time.sleep(0.1)
    except KeyboardInterrupt:
        failed = [(-1, -signal.SIGINT)]
    if failed:
        who = "the launcher was interrupted" if failed[0][0] < 0 else ", ".join(
            f"process {i} {_describe(code)}" for i, code in failed)
        with lock:
            out.write(f"[launch] {who}: stopping the other processes; rerun the same command to resume from "
                      "the last complete checkpoint\n")
            out.flush()
        _stop(children, grace_s)
    for pump in pumps:
        pump.join(timeout=5)
    if not failed:
        return 0
    code = failed[0][1]
    return 128 - code if code < 0 else code


def _stop(children: list[subprocess.Popen], grace_s: float) -> None:
    for child in children:
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    for child in children:
        try:
            child.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m leanjax.parallel.launch", description=__doc__.split("\n")[0],
                                     epilog="Everything after `--` is the command each process runs.")
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--devices-per-process", type=int, default=4)
    parser.add_argument("--port", type=int, default=None, help="coordinator port (default: a free one)")
    parser.add_argument("--grace-s", type=float, default=10.0,
                        help="seconds the other processes get to stop after one fails")
    argv = list(sys.argv[1:] if argv is None else argv)
    command = argv[argv.index("--") + 1:] if "--" in argv else []
    args = parser.parse_args(argv[:argv.index("--")] if "--" in argv else argv)
    try:
        return launch(command, processes=args.processes, devices_per_process=args.devices_per_process,
                      port=args.port, grace_s=args.grace_s)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
