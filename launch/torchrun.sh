#!/usr/bin/env bash
# Train on one node: torchrun starts one `flm train` process per GPU (or per CPU process on gloo).
#
#   launch/torchrun.sh [options] RUN.yaml [key=value ...]
#
# options:
#   --nproc N     processes (default: the run's tp x pp x dp when dp is set, else the GPUs here, else
#                 on CPU the smallest count that every stage's tp x pp divides)
#   --stage N     staged runs: only stage N (it starts from stage N-1's grown checkpoint)
#   --resume      continue from the latest checkpoint (a staged run: from where it stands)
#   --log FILE    also append the output to FILE
#   --dry-run     print the command and exit
#
# example: launch/torchrun.sh --nproc 2 configs/runs/tiny.yaml parallel.tp=2 train.steps=50
set -euo pipefail

FLM_REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export FLM_REPO
# shellcheck source=launch/common.sh
source "$FLM_REPO/launch/common.sh"

usage() { sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; }

nproc="" stage="" resume=0 dry_run=0 log="" config=""
overrides=()
while (($#)); do
  case $1 in
    --nproc) [[ $# -ge 2 ]] || flm_die "--nproc needs a value"; nproc=$2; shift 2 ;;
    --stage) [[ $# -ge 2 ]] || flm_die "--stage needs a value"; stage=$2; shift 2 ;;
    --log) [[ $# -ge 2 ]] || flm_die "--log needs a file"; log=$2; shift 2 ;;
    --resume) resume=1; shift ;;
    --dry-run) dry_run=1; shift ;;
    -h | --help) usage; exit 0 ;;
    -*) flm_die "unknown option $1 (see --help)" ;;
    *)
      if [[ -z $config ]]; then config=$1; else overrides+=("$1"); fi
      shift ;;
  esac
done
[[ -n $config ]] || { usage >&2; flm_die "no run config given"; }
[[ -f $config ]] || flm_die "run config not found: $config"
[[ -z $nproc || $nproc =~ ^[1-9][0-9]*$ ]] || flm_die "--nproc must be a positive integer, got '$nproc'"
[[ -z $stage || $stage =~ ^[0-9]+$ ]] || flm_die "--stage must be a stage index, got '$stage'"

gpus=$(flm_gpu_count)
if [[ -z $nproc ]]; then
  job_args=("$config" "${overrides[@]}")
  [[ -n $stage ]] && job_args+=(--stage "$stage")
  jobs=$(flm_jobs "${job_args[@]}") || flm_die "cannot read the run config (see above)"
  worlds=$(cut -f3 <<<"$jobs" | sort -u)
  if [[ $worlds =~ ^[0-9]+$ ]]; then
    nproc=$worlds
  elif [[ $worlds == "-" ]]; then
    # dp is free: every GPU here, or on CPU the smallest count every stage's tp x pp divides
    nproc=$gpus
    if ((nproc == 0)); then
      nproc=1
      while read -r mp; do
        a=$nproc b=$mp
        while ((b)); do t=$((a % b)) a=$b b=$t; done
        nproc=$((nproc * mp / a))
      done < <(cut -f4 <<<"$jobs")
    fi
  else
    flm_die "the stages need different process counts ($(tr '\n' ' ' <<<"$worlds")); use --stage N or --nproc N"
  fi
fi
if ((gpus > 0 && nproc > gpus)); then
  flm_die "$nproc processes but this node has $gpus GPUs; use launch/slurm/submit.sh for several nodes"
fi

train_args=("$config")
[[ -n $stage ]] && train_args+=(--stage "$stage")
((resume)) && train_args+=(--resume)
train_args+=("${overrides[@]}")
cmd=("$(flm_python)" -m torch.distributed.run --standalone --nnodes 1 --nproc-per-node "$nproc"
  -m training.cli train "${train_args[@]}")

if ((dry_run)); then
  echo "# one node, $nproc process(es)${log:+, log $log}"
  flm_show env "PYTHONPATH=$FLM_REPO${PYTHONPATH:+:$PYTHONPATH}" "${cmd[@]}"
  exit 0
fi

export PYTHONPATH="$FLM_REPO${PYTHONPATH:+:$PYTHONPATH}"
if [[ -n $log ]]; then
  mkdir -p "$(dirname "$log")"
  "${cmd[@]}" 2>&1 | tee -a "$log"
else
  exec "${cmd[@]}"
fi
