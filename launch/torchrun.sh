#!/usr/bin/env bash
# Train with torchrun: one `flm train` process per GPU (or per CPU process on gloo), on one node,
# or on several nodes by running the script once on each of them (static rendezvous on node 0).
#
#   launch/torchrun.sh [options] RUN.yaml [key=value ...]
#
# options:
#   --nproc N          processes on this node (default: the run's tp x pp x dp / nodes when dp is
#                      set, else the GPUs here, else on CPU the smallest count that makes every
#                      stage's tp x pp divide the world)
#   --stage N          staged runs: only stage N (it starts from stage N-1's grown checkpoint)
#   --resume           continue from the latest checkpoint (a staged run: from where it stands)
#   --log FILE         also append the output to FILE
#   --dry-run          print the command and exit
# several nodes (every node runs the script with the same config, nodes and master):
#   --nnodes N         nodes of the job (default 1: torchrun --standalone on a free port)
#   --node-rank R      this node's index, 0 .. N-1; its processes are ranks R*nproc .. R*nproc+nproc-1
#   --master-addr A    node 0's address, reachable from every node (required with --nnodes > 1)
#   --master-port P    the rendezvous port on node 0 (default 29500)
#
# examples: launch/torchrun.sh --nproc 2 configs/runs/tiny.yaml parallel.tp=2 train.steps=50
#           launch/torchrun.sh --nnodes 2 --node-rank 0 --master-addr node01 RUN.yaml   # on node01
#           launch/torchrun.sh --nnodes 2 --node-rank 1 --master-addr node01 RUN.yaml   # on node02
set -euo pipefail

FLM_REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export FLM_REPO
# shellcheck source=launch/common.sh
source "$FLM_REPO/launch/common.sh"

config="" overrides=() dry_run=0 stage="" resume=0 log=""
nproc="" nnodes=1 node_rank="" master_addr="" master_port=29500
# this script's options; --stage, --resume, --log, --dry-run, --help and the arguments: flm_train_arg
while (($#)); do
  case $1 in
    --nproc) need $# "$1"; nproc=$2; shift 2 ;;
    --nnodes) need $# "$1"; nnodes=$2; shift 2 ;;
    --node-rank) need $# "$1"; node_rank=$2; shift 2 ;;
    --master-addr) need $# "$1"; master_addr=$2; shift 2 ;;
    --master-port) need $# "$1"; master_port=$2; shift 2 ;;
    *) flm_train_arg "$@"; shift "$flm_used" ;;
  esac
done
flm_args_done
[[ -z $nproc || $nproc =~ ^[1-9][0-9]*$ ]] || flm_die "--nproc must be a positive integer, got '$nproc'"
[[ $nnodes =~ ^[1-9][0-9]*$ ]] || flm_die "--nnodes must be a positive integer, got '$nnodes'"
[[ $master_port =~ ^[0-9]+$ ]] || flm_die "--master-port must be a number, got '$master_port'"
if ((nnodes > 1)); then
  [[ -n $node_rank ]] || flm_die "--nnodes $nnodes needs --node-rank (this node's index, 0 .. $((nnodes - 1)))"
  if ! [[ $node_rank =~ ^[0-9]+$ ]] || ((node_rank >= nnodes)); then
    flm_die "--node-rank must be a node index 0 .. $((nnodes - 1)), got '$node_rank'"
  fi
  [[ -n $master_addr ]] || flm_die "--nnodes $nnodes needs --master-addr (node 0's address)"
elif [[ -n $node_rank && $node_rank != 0 ]]; then
  flm_die "--node-rank $node_rank needs --nnodes greater than $node_rank"
fi

gpus=$(flm_gpu_count)
if [[ -z $nproc ]]; then
  job_args=("$config" "${overrides[@]}")
  [[ -n $stage ]] && job_args+=(--stage "$stage")
  jobs=$(flm_jobs "${job_args[@]}") || flm_die "cannot read the run config (see above)"
  worlds=$(cut -f3 <<<"$jobs" | sort -u)
  gcd() {
    local a=$1 b=$2 t
    while ((b)); do t=$((a % b)) a=$b b=$t; done
    echo "$a"
  }
  if [[ $worlds =~ ^[0-9]+$ ]]; then
    ((worlds % nnodes == 0)) || flm_die "the run needs tp x pp x dp = $worlds processes, not a multiple of --nnodes $nnodes"
    nproc=$((worlds / nnodes))
  elif [[ $worlds == "-" ]]; then
    # dp is free: every GPU here, or on CPU the fewest processes per node that make every stage's
    # tp x pp divide the world (nodes x processes)
    nproc=$gpus
    if ((nproc == 0)); then
      lcm=1
      while read -r mp; do
        lcm=$((lcm * mp / $(gcd "$lcm" "$mp")))
      done < <(cut -f4 <<<"$jobs")
      nproc=$((lcm / $(gcd "$lcm" "$nnodes")))
    fi
  else
    flm_die "the stages need different process counts ($(tr '\n' ' ' <<<"$worlds")); use --stage N or --nproc N"
  fi
fi
if ((gpus > 0 && nproc > gpus)); then
  flm_die "$nproc processes but this node has $gpus GPUs; use --nnodes, or launch/slurm/submit.sh for several nodes"
fi

flm_train_args
if ((nnodes == 1)); then
  rdzv=(--standalone --nnodes 1)
  where="one node"
else
  # static rendezvous: node 0's agent serves it; node R's processes get ranks R*nproc ..
  rdzv=(--nnodes "$nnodes" --node-rank "$node_rank" --master-addr "$master_addr" --master-port "$master_port")
  where="node $node_rank of $nnodes (rendezvous $master_addr:$master_port)"
fi
cmd=("$(flm_python)" -m torch.distributed.run "${rdzv[@]}" --nproc-per-node "$nproc"
  -m training.cli train "${train_args[@]}")

if ((dry_run)); then
  echo "# $where, $nproc process(es)${log:+, log $log}"
  flm_show env "PYTHONPATH=$FLM_REPO${PYTHONPATH:+:$PYTHONPATH}" "${cmd[@]}"
  exit 0
fi
flm_exec "${cmd[@]}"
