# shellcheck shell=bash
# Helpers shared by the launch scripts (sourced, not run). Needs FLM_REPO set to the repository root.
#
#   flm_python            the interpreter: $FLM_PYTHON, else $FLM_REPO/.venv/bin/python, else python3
#   flm_die MSG           print "<script>: MSG" to stderr and exit 2
#   flm_show CMD...       print a command the way a shell would read it back
#   flm_jobs RUN [ARGS]   tab-separated lines "index name world tp*pp output_dir signal_lead_s"
#                         (python -m training.plan.jobs)
#   flm_gpu_count         GPUs on this machine (nvidia-smi), 0 without
#   flm_exec CMD...       run CMD with the repository first on PYTHONPATH: in place of the script, or
#                         with $log set, appending its output to that file (status: CMD's)
#
# Arguments. A launcher's option loop handles its own options and hands any other argument to
# flm_arg (or flm_train_arg), which parses what the launchers share:
#
#   config="" overrides=() dry_run=0 [stage="" resume=0 log=""]   # the script sets the defaults
#   while (($#)); do
#     case $1 in
#       --own) need $# "$1"; own=$2; shift 2 ;;
#       *) flm_arg "$@"; shift "$flm_used" ;;
#     esac
#   done
#   flm_args_done
#
#   need N OPTION         die "OPTION needs a value" unless one follows (N: the arguments left, $#)
#   flm_arg ARGS...       the first argument of ARGS, as every launcher reads it: -h/--help (the
#                         script's header comment, exit 0), --dry-run (dry_run=1), any other option
#                         dies as unknown; else the run config (config), then key=value overrides
#                         (appended to overrides, verbatim). Sets flm_used to the arguments taken.
#   flm_train_arg ARGS... flm_arg plus the options of the launchers that start `flm train` directly:
#                         --stage N (stage; dies unless N is a stage index), --resume (resume=1),
#                         --log FILE (log)
#   flm_args_done         die unless a run config was given and exists
#   flm_train_args        set train_args to `flm train`'s arguments: config, --stage N, --resume, overrides

flm_python() {
  if [[ -n ${FLM_PYTHON:-} ]]; then
    printf '%s\n' "$FLM_PYTHON"
  elif [[ -x $FLM_REPO/.venv/bin/python ]]; then
    printf '%s\n' "$FLM_REPO/.venv/bin/python"
  else
    command -v python3
  fi
}

flm_die() {
  printf '%s: %s\n' "$(basename "$0")" "$*" >&2
  exit 2
}

flm_show() {
  local out
  printf -v out '%q ' "$@"
  printf '%s\n' "${out% }"
}

flm_jobs() {
  PYTHONWARNINGS=ignore PYTHONPATH="$FLM_REPO${PYTHONPATH:+:$PYTHONPATH}" \
    "$(flm_python)" -m training.plan.jobs "$@"
}

flm_gpu_count() {
  if command -v nvidia-smi >/dev/null 2>&1; then
    nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true
  else
    echo 0
  fi
}

flm_exec() {
  export PYTHONPATH="$FLM_REPO${PYTHONPATH:+:$PYTHONPATH}"
  if [[ -n ${log:-} ]]; then
    mkdir -p "$(dirname "$log")"
    "$@" 2>&1 | tee -a "$log"
  else
    exec "$@"
  fi
}

need() { [[ $1 -ge 2 ]] || flm_die "$2 needs a value"; }

flm_usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; }

# shellcheck disable=SC2034  # dry_run and flm_used are read by the sourcing script
flm_arg() {
  flm_used=1
  case $1 in
    -h | --help) flm_usage; exit 0 ;;
    --dry-run) dry_run=1 ;;
    -*) flm_die "unknown option $1 (see --help)" ;;
    *) if [[ -z $config ]]; then config=$1; else overrides+=("$1"); fi ;;
  esac
}

# shellcheck disable=SC2034
flm_train_arg() {
  flm_used=2
  case $1 in
    --stage)
      need $# "$1"
      [[ $2 =~ ^[0-9]+$ ]] || flm_die "--stage must be a stage index, got '$2'"
      stage=$2 ;;
    --log) need $# "$1"; log=$2 ;;
    --resume) resume=1; flm_used=1 ;;
    *) flm_arg "$@" ;;
  esac
}

flm_args_done() {
  [[ -n $config ]] || { flm_usage >&2; flm_die "no run config given"; }
  [[ -f $config ]] || flm_die "run config not found: $config"
}

flm_train_args() {
  train_args=("$config")
  [[ -n $stage ]] && train_args+=(--stage "$stage")
  ((resume)) && train_args+=(--resume)
  train_args+=("${overrides[@]}")
}
