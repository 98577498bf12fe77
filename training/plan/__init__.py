"""``flm plan``: what a run costs before it runs.

For every stage of a run config: parameter count, FLOPs per token, memory per GPU under the
stage's layout (weights, gradients, optimizer states, activations with and without
recomputation), whether it fits, throughput, days and GPU-hours, and the same for training the
final shape from scratch on the run's whole token budget; the checkpoint's save and load times
with the process-group timeout they need; plus layout checks with the key to fix.
``--materialize`` builds every pipeline rank's model on the meta device under a simulated world
(no memory is allocated), so a 192-GPU layout is validated on a laptop.

Modules, one job each:
- ``hardware``: GPU kinds (memory, bf16 peak).
- ``params``: exact per-rank parameter counts of a layout (analytic).
- ``memory``: bytes per GPU: states by ZeRO stage, activations (Korthikanti et al. 2022).
- ``throughput``: FLOPs formulas, tokens per day, measured MFU from ``metrics.jsonl``.
- ``ckpt``: checkpoint size, save and load + verify times; recommended process-group timeout and
  Slurm signal lead time.
- ``checks``: layout findings (world size, batch divisibility, pipeline balance, memory, TP span,
  process-group timeout).
- ``planner``: puts the above together into a ``RunPlan``.
- ``report``: the text tables and the JSON form.
- ``materialize``: meta-device builds per (TP rank, PP rank) under a fake process group.
- ``jobs``: stage sizes for the launch scripts (``python -m training.plan.jobs``).
- ``cli``: the ``flm plan`` subcommand.
"""
