"""Functions the lm-eval task YAMLs call (through ``eval_iq/tasks/hooks.py``).

``build_dataset`` is every task's ``custom_dataset``. lm-eval calls it with the task's
``dataset_kwargs`` (``subtask``) plus the run's metadata, so benchmark options travel as
metadata keys (prefixed ``iq_`` to stay clear of model arguments that lm-eval merges in):

* ``iq_seed`` (default 1234), ``iq_size`` (instances; default per subtask),
* ``iq_shots`` (demonstrations; per label for symbolic mapping; default per subtask),
* ``iq_data_dir`` (symbolic-mapping data directory; default ``$FLM_IQ_DATA_DIR``, else the hub).

Example: ``lm_eval run --include_path eval_iq/tasks --tasks flm_iq \\
--metadata '{"iq_data_dir": "../shared/data"}' ...``.
Nothing is downloaded for generated subtasks; symbolic mapping reads the hub only when no data
directory is configured and the process is online.
"""

from __future__ import annotations

from typing import Any

import datasets

from eval_iq.generate import DEFAULT_SEED, generate
from eval_iq.scoring import process_generation  # re-exported for the YAMLs

__all__ = ["build_dataset", "process_generation"]


def build_dataset(
    subtask: str,
    iq_seed: int | str = DEFAULT_SEED,
    iq_size: int | str | None = None,
    iq_shots: int | str | None = None,
    iq_data_dir: str | None = None,
    **_unused: Any,
):
    """Return ``DatasetDict({"test": Dataset})`` of the generated instances of ``subtask``.

    Raises :class:`~eval_iq.errors.DataNotFoundError` for a missing dataset; the task class
    (:class:`eval_iq.lm_task.IQTask`) turns that into a skipped task with a warning.
    """

    records = generate(subtask, seed=iq_seed, size=iq_size, shots=iq_shots, data_dir=iq_data_dir)
    features = datasets.Features(
        {
            "subtask": datasets.Value("string"),
            "seed": datasets.Value("int64"),
            "index": datasets.Value("int64"),
            "prompt": datasets.Value("string"),
            "choices": datasets.Sequence(datasets.Value("string")),
            "gold": datasets.Value("int64"),
            "answer": datasets.Value("string"),
            "meta": datasets.Value("string"),
        }
    )
    columns = {name: [r[name] for r in records] for name in features}
    return datasets.DatasetDict({"test": datasets.Dataset.from_dict(columns, features=features)})
