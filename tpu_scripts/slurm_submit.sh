#!/usr/bin/env bash
# Submit a leanjax experiment to a SLURM GPU cluster (see slurm_gpu.sbatch), optionally following its log.
#
#   tpu_scripts/slurm_submit.sh --nodes 2 --gpus-per-node 8 --partition gpu --time 01:00:00 \
#       --experiment parallel --workdir /shared/runs/parallel --venv /shared/leanjax/.venv --dry-run
#
# --dry-run prints the commands instead of running them; --follow tails the job's log until it ends.
# --install first builds --venv from this checkout (on the filesystem the nodes share): exactly what
# requirements/lock.txt pins, jax[cuda12] at the lock's jax version, and requirements/assets.txt (the
# shipped weights and data sets). The nodes run this checkout's code, so no repository URL is needed.
set -euo pipefail

NODES=1 GPUS=8 PARTITION="" TIME="01:00:00" ACCOUNT="" EXPERIMENT="baseline" CONFIG="" WORKDIR="" VENV=""
DRY_RUN=0 FOLLOW=0 INSTALL=0 EXTRA=()
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

while (($#)); do
  case "$1" in
    --nodes) NODES="$2"; shift 2 ;;
    --gpus-per-node) GPUS="$2"; shift 2 ;;
    --partition) PARTITION="$2"; shift 2 ;;
    --time) TIME="$2"; shift 2 ;;
    --account) ACCOUNT="$2"; shift 2 ;;
    --experiment) EXPERIMENT="$2"; shift 2 ;;
    --config) CONFIG="$2"; shift 2 ;;
    --workdir) WORKDIR="$2"; shift 2 ;;
    --venv) VENV="$2"; shift 2 ;;
    --follow) FOLLOW=1; shift ;;
    --install) INSTALL=1; shift ;;
    --dry-run) DRY_RUN=1; shift ;;
    -h|--help) sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    --) shift; EXTRA=("$@"); break ;;
    *) echo "error: unknown flag $1" >&2; exit 2 ;;
  esac
done

[[ "$NODES" =~ ^[1-9][0-9]*$ ]] || { echo "error: --nodes must be a positive integer" >&2; exit 2; }
[[ "$GPUS" =~ ^[1-9][0-9]*$ ]] || { echo "error: --gpus-per-node must be a positive integer" >&2; exit 2; }
[[ "$EXPERIMENT" =~ ^[a-z_][a-z0-9_]*$ ]] || { echo "error: bad --experiment $EXPERIMENT" >&2; exit 2; }
WORKDIR="${WORKDIR:-$PWD/runs/$EXPERIMENT/slurm}"
VENV="${VENV:-$PWD/.venv}"

# Print (dry run) or execute one command; printf %q quotes it so the printed line can be pasted.
run() {
  if ((DRY_RUN)); then
    printf '%q ' "$@"; printf '\n'
  else
    "$@"
  fi
}

if ((INSTALL)); then
  ROOT="$(dirname "$HERE")"
  JAX_VERSION="$(sed -n 's/^jax==\([0-9.]*\)$/\1/p' "$ROOT/requirements/lock.txt")"
  [[ -n "$JAX_VERSION" ]] || { echo "error: $ROOT/requirements/lock.txt pins no jax version" >&2; exit 2; }
  run python3 -m venv "$VENV"
  run "$VENV/bin/pip" install -q -c "$ROOT/requirements/lock.txt" -e "${ROOT}[experiments]" "jax[cuda12]==$JAX_VERSION"
  run "$VENV/bin/pip" install -q --no-deps -r "$ROOT/requirements/assets.txt"
fi

cmd=(sbatch --parsable --nodes "$NODES" --gpus-per-node "$GPUS" --time "$TIME")
[[ -n "$PARTITION" ]] && cmd+=(--partition "$PARTITION")
[[ -n "$ACCOUNT" ]] && cmd+=(--account "$ACCOUNT")
exports="ALL,EXPERIMENT=$EXPERIMENT,WORKDIR=$WORKDIR,VENV=$VENV"
[[ -n "$CONFIG" ]] && exports+=",CONFIG=$CONFIG"
((${#EXTRA[@]})) && exports+=",EXTRA_ARGS=${EXTRA[*]}"
cmd+=(--export "$exports" "$HERE/slurm_gpu.sbatch")

if ((DRY_RUN)); then
  run "${cmd[@]}"
  exit 0
fi
job="$("${cmd[@]}")"
echo "submitted job $job"
if ((FOLLOW)); then
  log="slurm-leanjax-$job.out"
  until [[ -f "$log" ]]; do sleep 5; done
  tail -n +1 -F "$log" &
  tailer=$!
  while squeue -h -j "$job" | grep -q .; do sleep 15; done
  kill "$tailer"
fi
