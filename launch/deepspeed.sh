#!/usr/bin/env bash
# Train with DeepSpeed's launcher on the hosts of a hostfile (it reaches the other hosts over
# ssh with pdsh, and sets RANK/LOCAL_RANK/WORLD_SIZE/MASTER_ADDR/MASTER_PORT for `flm train`).
#
#   launch/deepspeed.sh --hostfile FILE [options] RUN.yaml [key=value ...]
#   launch/deepspeed.sh --hostfile FILE --node-rank R [options] RUN.yaml [key=value ...]   # without ssh
#
# hostfile: one "HOST slots=N" line per node (N = GPUs used there), '#' starts a comment; the
# slots must add up to the stage's tp x pp x dp. A hostfile of one line naming this machine
# ("localhost slots=2") runs locally without DeepSpeed's ssh check. Without ssh between the
# hosts, run the script on every host with its --node-rank (its line in the hostfile, from 0):
# each starts only its own processes (DeepSpeed's --no_ssh) and they meet at the first host.
#
# options:
#   --hostfile FILE     the hosts (required)
#   --stage N           staged runs: only stage N (one launch per stage, like the Slurm jobs)
#   --resume            continue from the latest checkpoint
#   --master-port P     rendezvous port on the first host (default 29500)
#   --node-rank R       start only the processes of host R (0-based line of the hostfile), no ssh
#   --launcher NAME     DeepSpeed's multi-node launcher: pdsh (default), openmpi, mvapich, slurm
#   --log FILE          also append the output to FILE
#   --dry-run           check the hostfile against the layout, print the command and exit
#
# Variables the remote processes need (PYTHONPATH, NCCL_*) go in ~/.deepspeed_env or
# ./.deepspeed_env ("NAME=value" lines); this script writes none.
set -euo pipefail

FLM_REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export FLM_REPO
# shellcheck source=launch/common.sh
source "$FLM_REPO/launch/common.sh"

config="" overrides=() dry_run=0 stage="" resume=0 log=""
hostfile="" port=29500 launcher=pdsh node_rank=""
# this script's options; --stage, --resume, --log, --dry-run, --help and the arguments: flm_train_arg
while (($#)); do
  case $1 in
    --hostfile) need $# "$1"; hostfile=$2; shift 2 ;;
    --master-port) need $# "$1"; port=$2; shift 2 ;;
    --launcher) need $# "$1"; launcher=$2; shift 2 ;;
    --node-rank) need $# "$1"; node_rank=$2; shift 2 ;;
    *) flm_train_arg "$@"; shift "$flm_used" ;;
  esac
done
flm_args_done
[[ -n $hostfile ]] || flm_die "--hostfile FILE is required (lines 'HOST slots=N')"
[[ -f $hostfile ]] || flm_die "hostfile not found: $hostfile"
[[ $port =~ ^[0-9]+$ ]] || flm_die "--master-port must be a number, got '$port'"
[[ -z $node_rank || $node_rank =~ ^[0-9]+$ ]] || flm_die "--node-rank must be a host index, got '$node_rank'"

# parse the hostfile the way DeepSpeed does: "host slots=N", blank lines and comments ignored
hosts=() world=0 lineno=0
while IFS= read -r line || [[ -n $line ]]; do
  lineno=$((lineno + 1))
  line=${line%%#*}
  read -r host slots rest <<<"$line" || true
  [[ -z ${host:-} ]] && continue
  if [[ -n ${rest:-} || ! ${slots:-} =~ ^slots=([1-9][0-9]*)$ ]]; then
    flm_die "$hostfile line $lineno: expected 'HOST slots=N', got '$line'"
  fi
  for seen in "${hosts[@]}"; do
    [[ $seen != "$host" ]] || flm_die "$hostfile line $lineno: host $host is listed twice"
  done
  hosts+=("$host")
  world=$((world + BASH_REMATCH[1]))
done <"$hostfile"
((${#hosts[@]})) || flm_die "$hostfile lists no hosts"
if [[ -n $node_rank ]] && ((node_rank >= ${#hosts[@]})); then
  flm_die "--node-rank $node_rank but $hostfile lists ${#hosts[@]} host(s) (0 .. $((${#hosts[@]} - 1)))"
fi

job_args=("$config" "${overrides[@]}")
[[ -n $stage ]] && job_args+=(--stage "$stage")
jobs=$(flm_jobs "${job_args[@]}") || flm_die "cannot read the run config (see above)"
while IFS=$'\t' read -r index name need_world mp _out _lead; do
  if [[ $need_world == "-" ]]; then
    ((world % mp == 0)) || flm_die "stage $index ($name): $world slots in $hostfile are not a multiple of tp x pp = $mp"
  elif ((need_world != world)); then
    flm_die "stage $index ($name) needs tp x pp x dp = $need_world processes but $hostfile has $world slots; fix the slots or use --stage N"
  fi
done <<<"$jobs"

flm_train_args
cmd=(deepspeed --hostfile "$hostfile" --launcher "$launcher" --master_addr "${hosts[0]}" --master_port "$port")
if [[ -n $node_rank ]]; then
  # this host's processes only (ranks after the slots of the hosts above it); nothing over ssh
  cmd+=(--no_ssh --node_rank "$node_rank")
elif ((${#hosts[@]} == 1)) && [[ ${hosts[0]} =~ ^(localhost|127\.0\.0\.1|$(hostname -s)|$(hostname -f 2>/dev/null || hostname))$ ]]; then
  # one host that is this machine: nothing to reach over ssh (DeepSpeed checks ssh for any hostfile)
  cmd+=(--no_ssh_check)
fi
cmd+=(--module --no_local_rank training.cli train "${train_args[@]}")

if ((dry_run)); then
  echo "# ${#hosts[@]} host(s), $world process(es): ${hosts[*]}${node_rank:+; here host $node_rank (${hosts[node_rank]:-})}"
  flm_show "${cmd[@]}"
  exit 0
fi
command -v deepspeed >/dev/null 2>&1 || flm_die "the deepspeed launcher is not installed (pip install deepspeed)"
flm_exec "${cmd[@]}"
