# shellcheck shell=bash
# Helpers shared by the launch scripts (sourced, not run). Needs FLM_REPO set to the repository root.
#
#   flm_python            the interpreter: $FLM_PYTHON, else $FLM_REPO/.venv/bin/python, else python3
#   flm_die MSG           print "<script>: MSG" to stderr and exit 2
#   flm_show CMD...       print a command the way a shell would read it back
#   flm_jobs RUN [ARGS]   tab-separated lines "index name world tp*pp output_dir" (python -m training.plan.jobs)
#   flm_gpu_count         GPUs on this machine (nvidia-smi), 0 without

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
