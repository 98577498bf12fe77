"""The collaborators of ``BaseTrainer.fit`` (``training.engine.trainer_base``), one job each.

After every optimizer step ``fit`` calls them in this order:

1. ``divergence.DivergenceGuard.observe`` — the step's skip reason, the consecutive-skip count,
   the window of recent good losses (the guard's ``check`` already ran inside the step, on the
   loss with ``faults.injected_loss`` applied);
2. ``meter.StepMeter.record`` — the metrics record (tokens/s, TFLOP/s per device, MFU), then the
   validation loss when due, then the record is logged when due;
3. ``DivergenceGuard.diverged`` — too many bad steps in a row: the trainer stops or rolls back
   (``DivergenceGuard.before_rollback`` decides; the trainer reloads through the checkpointer) and
   the loop goes on with the next step, skipping 4-6;
4. ``checkpointer.Checkpointer.after_step`` — the periodic save (only after a good step);
5. ``faults.kill_if_due`` — ``FLM_FAULT_AT``;
6. ``preemption.Preemption.requested`` — collective: any rank signalled, every rank saves
   (``Checkpointer.save_if_missing``) and raises ``PreemptedError``.

Around each step ``profiler.StepProfiler`` starts, marks and ends the ``logging.profile`` window
(before the step's timer starts and after it stops). After the last step the checkpointer saves the
final step if it is missing. The engines see none of
this: they implement ``step``/``save``/``load``/``init_from``, the forward-only loss, the train mode
and ``mask_chunks``.
"""
