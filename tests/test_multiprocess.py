"""Multi-host for real, on one machine: 2 processes x 4 CPU devices joined by `jax.distributed` over
loopback (`leanjax.parallel.launch`) train the baseline data-parallel, each process reading its own rows,
saving orbax checkpoints together; they end equal to 1 process x 8 devices, and a run with one process
killed stops with a message naming it and resumes, with the same command, to the same params."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from leanjax.parallel.launch import launch, process_env

ROOT = Path(__file__).resolve().parents[1]
STEPS = 120


def _baseline(workdir, steps=STEPS):
    return [sys.executable, "-m", "leanjax.experiments.baseline", "--config", "configs/baseline/default.py:tiny",
            "--config.data_parallel=true", "--config.progress=false", f"--config.num_steps={steps}",
            "--config.checkpoint_every=20", "--config.eval_every=60", "--config.keep_checkpoints=10",
            "--workdir", str(workdir)]


LAUNCH = [sys.executable, "-m", "leanjax.parallel.launch", "--processes", "2", "--devices-per-process", "4",
          "--grace-s", "5", "--"]


def _launcher(workdir, steps=STEPS):
    return [*LAUNCH, *_baseline(workdir, steps)]


def _env(**extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_")}
    return {**env, "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu", **extra}


def _params(workdir, step=STEPS):
    """The checkpoint's params, read in this (one-device) process: the target puts every array on it."""
    path = Path(workdir) / "checkpoints" / str(step) / "state"
    checkpointer = ocp.StandardCheckpointer()
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
                          checkpointer.metadata(path).item_metadata.tree, is_leaf=lambda m: hasattr(m, "shape"))
    return jax.tree.map(np.asarray, checkpointer.restore(path, target)["params"])


def _assert_params(a, b, **tol):
    flat_a, flat_b = jax.tree_util.tree_leaves_with_path(a), jax.tree_util.tree_leaves_with_path(b)
    assert [p for p, _ in flat_a] == [p for p, _ in flat_b]
    for (path, x), (_, y) in zip(flat_a, flat_b):
        np.testing.assert_allclose(x, y, err_msg=jax.tree_util.keystr(path), **tol)


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    """The reference: one process with 8 CPU devices, same global batches."""
    workdir = tmp_path_factory.mktemp("single")
    proc = subprocess.run(_baseline(workdir), cwd=ROOT, env=_env(JAX_NUM_CPU_DEVICES="8"), capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return workdir


def test_two_processes_end_equal_to_one_process_on_eight_devices(single, tmp_path):
    proc = subprocess.run(_launcher(tmp_path), cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-4000:]
    assert "[p0] summary:" in proc.stdout and "[p1] summary:" in proc.stdout
    # Shared files are process 0's; process 1 writes its own under process_1/.
    one, two = (json.loads((w / "summary.json").read_text()) for w in (single, tmp_path))
    assert (tmp_path / "process_1" / "summary.json").is_file()
    assert one["metrics"]["final_train_loss"] == pytest.approx(two["metrics"]["final_train_loss"], rel=1e-5)
    assert one["headline"]["eval_accuracy"] == two["headline"]["eval_accuracy"]
    _assert_params(_params(single), _params(tmp_path), rtol=1e-5, atol=1e-6)


def test_a_killed_process_stops_the_run_and_the_same_command_resumes(single, tmp_path):
    command = _launcher(tmp_path)
    run = subprocess.Popen(command, cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           text=True)
    pids, lines = {}, []
    for line in run.stdout:
        lines.append(line)
        if line.startswith("[launch] process") and " pid " in line:
            words = line.split()
            pids[int(words[2])] = int(words[4])
        if len(pids) == 2:
            break
    # Kill process 1 once a checkpoint is committed, mid-run.
    deadline = time.monotonic() + 240
    while not (tmp_path / "checkpoints" / "40").is_dir():
        assert run.poll() is None and time.monotonic() < deadline, "".join(lines)[-3000:]
        time.sleep(0.05)
    os.kill(pids[1], signal.SIGKILL)
    lines += run.stdout.readlines()
    code = run.wait(timeout=120)
    out = "".join(lines)
    assert code != 0, out[-3000:]
    report = next(line for line in out.splitlines() if line.startswith("[launch]") and "stopping the other" in line)
    assert "process 1 was killed by SIGKILL" in report and "rerun the same command to resume" in report
    assert "[p0] summary:" not in out  # it did not finish

    proc = subprocess.run(command, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-4000:]
    resumed = [int(line.split("at step ")[1].split()[0]) for line in proc.stdout.splitlines()
               if "resumed from checkpoint at step" in line]
    assert len(resumed) == 2 and resumed[0] == resumed[1] >= 40
    _assert_params(_params(single), _params(tmp_path), rtol=1e-5, atol=1e-6)


def test_launcher_environment_and_errors(capsys):
    env = process_env(1, processes=2, devices_per_process=4, port=1234, base={"PATH": "/bin"})
    assert env == {"PATH": "/bin", "JAX_COORDINATOR_ADDRESS": "127.0.0.1:1234", "JAX_NUM_PROCESSES": "2",
                   "JAX_PROCESS_ID": "1", "JAX_PLATFORMS": "cpu", "JAX_NUM_CPU_DEVICES": "4",
                   "JAX_CPU_COLLECTIVES_IMPLEMENTATION": "gloo", "PYTHONUNBUFFERED": "1"}
    with pytest.raises(ValueError, match="processes >= 1"):
        launch(["true"], processes=0, devices_per_process=4)
    with pytest.raises(ValueError, match="no command"):
        launch([], processes=2, devices_per_process=4)


def test_launcher_reports_a_failing_process_and_its_code(tmp_path):
    """A process that fails on its own (no jax involved) stops the others, and its code is returned."""
    script = tmp_path / "worker.py"
    script.write_text("import os, sys, time\n"
                      "if os.environ['JAX_PROCESS_ID'] == '1':\n    print('bad input', flush=True); sys.exit(3)\n"
                      "time.sleep(60)\n")
    log = tmp_path / "out.txt"
    with open(log, "w") as out:
        t0 = time.monotonic()
        code = launch([sys.executable, str(script)], processes=2, devices_per_process=1, port=1, grace_s=2,
                      out=out)
    text = log.read_text()
    assert code == 3 and time.monotonic() - t0 < 30
    assert "[p1] bad input" in text and "[launch] process 1 exited with code 3: stopping the other" in text


def test_a_config_that_leaves_a_process_without_devices_is_a_clear_error(tmp_path):
    command = [sys.executable, "-m", "leanjax.experiments.parallel", "--config", "configs/parallel/default.py:tiny",
               "--workdir", str(tmp_path)]
    proc = subprocess.run([*LAUNCH, *command], cwd=ROOT, env=_env(), capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode != 0
    assert "config.devices=2 would leave some of the 2 processes without a device" in proc.stdout
