#!/usr/bin/env bash
# Submit a run to Slurm: one job per stage, chained with --dependency=afterok so stage N+1 starts
# when stage N finished, each job sized from its stage's layout (tp x pp x dp GPUs), requeueable,
# with its own log (<log-dir>/stage<N>-<name>.<jobid>.log, appended across requeues).
#
#   launch/slurm/submit.sh [options] RUN.yaml [key=value ...]
#
# options:
#   --stage N             submit only stage N            --from N     stages N..last
#   --whole               one job running every stage (all stages must need the same GPU count)
#   --gpus-per-node G     GPUs per node (default 8)      --gpus N     GPUs of every job when dp is null
#   --after JOBID         the first job waits for JOBID (afterok)
#   --log-dir DIR         default: <output_dir>/logs
#   --time T              per-job time limit (sbatch --time); default: the partition's
#   --requeue-grace S     seconds before the time limit at which Slurm signals the job to save and
#                         requeue itself (sbatch --signal=B:USR1@S); default: per stage, the planner's
#                         estimate of its checkpoint save with a margin (flm plan's "signal lead")
#   --ckpt-write-gbps X   per-node write / read bandwidth to the checkpoint filesystem (GB/s) that
#   --ckpt-read-gbps X    the planner assumes for that estimate (defaults 1 and 2)
#   --sbatch ARG          pass ARG to every sbatch call (repeatable): --sbatch=--partition=gpu
#   --eval                after each stage job, a one-GPU job that scores the stage's final checkpoint
#                         (flm eval <output_dir> --final-only: the run's iq_eval, outside the training
#                         job; the next stage does not wait for it)
#   --dry-run             print the sbatch commands instead of submitting
#
# example: launch/slurm/submit.sh --sbatch=--partition=a800 configs/runs/flm101b.yaml
set -euo pipefail

FLM_REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
export FLM_REPO
# shellcheck source=launch/common.sh
source "$FLM_REPO/launch/common.sh"

only="" from=0 whole=0 gpus_per_node=8 gpus="" after="" log_dir="" time_limit="" grace="" dry_run=0 config=""
write_gbps="" read_gbps="" eval=0
overrides=() extra=()
# this script's options; --dry-run, --help and the arguments: flm_arg
while (($#)); do
  case $1 in
    --stage) need $# "$1"; only=$2; shift 2 ;;
    --from) need $# "$1"; from=$2; shift 2 ;;
    --whole) whole=1; shift ;;
    --gpus-per-node) need $# "$1"; gpus_per_node=$2; shift 2 ;;
    --gpus) need $# "$1"; gpus=$2; shift 2 ;;
    --after) need $# "$1"; after=$2; shift 2 ;;
    --log-dir) need $# "$1"; log_dir=$2; shift 2 ;;
    --time) need $# "$1"; time_limit=$2; shift 2 ;;
    --requeue-grace) need $# "$1"; grace=$2; shift 2 ;;
    --ckpt-write-gbps) need $# "$1"; write_gbps=$2; shift 2 ;;
    --ckpt-read-gbps) need $# "$1"; read_gbps=$2; shift 2 ;;
    --sbatch) need $# "$1"; extra+=("$2"); shift 2 ;;
    --sbatch=*) extra+=("${1#--sbatch=}"); shift ;;
    --eval) eval=1; shift ;;
    *) flm_arg "$@"; shift "$flm_used" ;;
  esac
done
flm_args_done
for pair in "gpus-per-node:$gpus_per_node" "requeue-grace:${grace:-0}" "from:$from" "stage:${only:-0}" "gpus:${gpus:-1}"; do
  [[ ${pair#*:} =~ ^[0-9]+$ ]] || flm_die "--${pair%%:*} must be a non-negative integer, got '${pair#*:}'"
done
((gpus_per_node > 0)) || flm_die "--gpus-per-node must be > 0"
config=$(cd "$(dirname "$config")" && pwd)/$(basename "$config")

job_args=("$config" "${overrides[@]}" --gpus-per-node "$gpus_per_node")
[[ -n $gpus ]] && job_args+=(--gpus "$gpus")
[[ -n $write_gbps ]] && job_args+=(--ckpt-write-gbps "$write_gbps")
[[ -n $read_gbps ]] && job_args+=(--ckpt-read-gbps "$read_gbps")
jobs=$(flm_jobs "${job_args[@]}") || flm_die "cannot read the run config (see above)"

# the jobs to submit: "index name world signal_lead"
selected=()
while IFS=$'\t' read -r index name world _mp out_dir lead; do
  [[ $world == "-" ]] && flm_die "stage $index ($name) has parallel.dp null, so its GPU count is unknown; pass --gpus N"
  if [[ -n $only && $index != "$only" ]] || [[ $index != all && $index -lt $from ]]; then
    continue
  fi
  selected+=("$index"$'\t'"$name"$'\t'"$world"$'\t'"${grace:-$lead}")
  [[ -n $log_dir ]] || log_dir=$(dirname "$out_dir")/logs
  run_dir=$(dirname "$out_dir")
  [[ $index == all ]] && log_dir=$out_dir/logs && run_dir=$out_dir
done <<<"$jobs"
((${#selected[@]})) || flm_die "no stage selected (the run has: $(cut -f1 <<<"$jobs" | tr '\n' ' '))"
if ((whole)) && [[ ${selected[0]%%$'\t'*} != all ]]; then
  worlds=$(printf '%s\n' "${selected[@]}" | cut -f3 | sort -u)
  [[ $worlds =~ ^[0-9]+$ ]] || flm_die "--whole needs every stage on the same GPU count, they need: $(tr '\n' ' ' <<<"$worlds")"
  # one job saves every stage's checkpoint: the longest lead time
  lead=$(printf '%s\n' "${selected[@]}" | cut -f4 | sort -n | tail -n 1)
  selected=("all"$'\t'"$(basename "$config" .yaml)"$'\t'"$worlds"$'\t'"$lead")
fi

run_name=$(basename "$config" .yaml)
previous=$after
((dry_run)) || mkdir -p "$log_dir"
for entry in "${selected[@]}"; do
  IFS=$'\t' read -r index name world lead <<<"$entry"
  ((world % gpus_per_node == 0)) || ((world < gpus_per_node)) ||
    flm_die "stage $index ($name) needs $world GPUs, not a multiple of --gpus-per-node $gpus_per_node"
  if ((world < gpus_per_node)); then
    nodes=1 per_node=$world
  else
    nodes=$((world / gpus_per_node)) per_node=$gpus_per_node
  fi
  label=$([[ $index == all ]] && echo "all" || echo "stage$index-$name")
  cmd=(sbatch --parsable --job-name "flm-$run_name-$label" --nodes "$nodes" --ntasks-per-node 1
    --gpus-per-node "$per_node" --requeue --open-mode append --signal "B:USR1@$lead"
    --output "$log_dir/$label.%j.log" --chdir "$PWD"
    --export "ALL,FLM_REPO=$FLM_REPO,FLM_GPUS_PER_NODE=$per_node")
  [[ -n $time_limit ]] && cmd+=(--time "$time_limit")
  [[ -n $previous ]] && cmd+=(--dependency "afterok:$previous")
  cmd+=("${extra[@]}" "$FLM_REPO/launch/slurm/stage.sbatch" "$config" "$index" "${overrides[@]}")
  if ((dry_run)); then
    echo "# $label: $world GPUs = $nodes node(s) x $per_node; save signalled ${lead}s before the time limit"
    flm_show "${cmd[@]}"
    previous="<job of $label>"
  else
    id=$("${cmd[@]}")
    id=${id%%;*}
    echo "submitted $label as job $id (${nodes} node(s) x ${per_node} GPUs${previous:+, after $previous}); log $log_dir/$label.$id.log"
    previous=$id
  fi
  if ((eval)); then
    # scores the stage's final checkpoint in a job of its own; the chain does not wait for it
    eval_cmd=(sbatch --parsable --job-name "flm-$run_name-$label-eval" --nodes 1 --ntasks-per-node 1
      --gpus-per-node 1 --dependency "afterok:$previous" --output "$log_dir/$label-eval.%j.log" --chdir "$PWD"
      "${extra[@]}" --wrap "$(printf '%q ' "$(flm_python)" -m training.cli eval "$run_dir" --final-only)")
    if ((dry_run)); then
      flm_show "${eval_cmd[@]}"
    else
      eval_id=$("${eval_cmd[@]}")
      echo "submitted $label-eval as job ${eval_id%%;*} (after $previous): flm eval $run_dir --final-only"
    fi
  fi
done
