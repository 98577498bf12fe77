"""FLM IQ benchmark harness: generators, lm-eval tasks, a checkpoint adapter and ``flm iq``.

Modules (each has one job):

* :mod:`eval_iq.registry` - subtasks, categories, groups, defaults, chance levels.
* :mod:`eval_iq.generate` - ``generate(subtask, seed, size, shots, data_dir)`` -> instances;
  generators in ``gen_rules``, ``gen_patterns``, ``gen_anti``, ``symbolic`` (+ ``symbolic_data``).
* :mod:`eval_iq.lm_hooks`, ``eval_iq/tasks/*.yaml`` - lm-eval tasks and groups
  (``lm_eval --include_path eval_iq/tasks``); YAMLs rendered by :mod:`eval_iq.yaml_tasks`;
  task class :mod:`eval_iq.lm_task` (skips a missing dataset), group aggregation
  :mod:`eval_iq.lm_groups` (FLM IQ = mean of categories, partial groups marked).
* :mod:`eval_iq.adapter` - lm-eval ``LM`` over a generic causal-LM backend (project checkpoints).
* :mod:`eval_iq.runner`, :mod:`eval_iq.report`, :mod:`eval_iq.chart`, :mod:`eval_iq.truncation`,
  :mod:`eval_iq.cli` - the ``flm iq`` command; :mod:`eval_iq.prompt_budget` - prompt length bound.
* :mod:`eval_iq.stage_eval` - the benchmark at the end of each stage of a growth run.

The spec is ``docs/iq-benchmark.md``.
"""

from eval_iq.registry import HARNESS_VERSION as __version__  # noqa: E402

__all__ = ["__version__"]
