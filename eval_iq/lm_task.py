"""The lm-eval task class of every IQ subtask: a ``ConfigurableTask`` that skips a missing dataset.

The task YAMLs name it (``class: !function hooks.IQTask``). It behaves exactly like lm-eval's
``ConfigurableTask`` built from the same YAML, except when the task's ``custom_dataset`` (see
:func:`eval_iq.lm_hooks.build_dataset`) raises :class:`~eval_iq.errors.DataNotFoundError` (a
symbolic-mapping dataset that is not in the data directory, e.g. AFQMC in ``../shared/data``):

* a warning names the task and the reason;
* the task has no documents and sends no request, so lm-eval reports no ``acc`` for it;
* the groups containing it aggregate the rest and are shown as partial (:mod:`eval_iq.lm_groups`).

So one missing dataset does not abort ``lm_eval --tasks flm_iq``, as ``flm iq --skip-unavailable``
runs the rest. Malformed data and every other error still raise.
"""

from __future__ import annotations

import functools
import logging
from typing import Any

import datasets
from lm_eval.api.task import ConfigurableTask

from eval_iq.errors import DataNotFoundError

logger = logging.getLogger(__name__)


def _placeholder() -> datasets.DatasetDict:
    """One dummy record, only for ``ConfigurableTask.__init__``'s format check of a first doc."""
    doc = {"subtask": "", "seed": 0, "index": 0, "prompt": "", "choices": ["-"], "gold": 0, "answer": "", "meta": "{}"}
    return datasets.DatasetDict({"test": datasets.Dataset.from_list([doc])})


class IQTask(ConfigurableTask):
    """``ConfigurableTask`` whose missing dataset makes it an empty, skipped task (module doc).

    ``skip_reason`` is ``None`` for a task that runs, else the data error's message.
    """

    def __init__(self, config: dict[str, Any] | None = None, **kwargs: Any) -> None:
        config = {k: v for k, v in (config or {}).items() if k != "class"}
        self.skip_reason: str | None = None  # set after __init__: the base class reads one doc
        errors: list[str] = []
        build = config.get("custom_dataset")

        @functools.wraps(build)  # the run's dumped config shows the YAML's function
        def guarded(**build_kwargs: Any) -> datasets.DatasetDict:
            try:
                return build(**build_kwargs)
            except DataNotFoundError as err:
                errors.append(str(err))
                return _placeholder()

        if callable(build):
            config["custom_dataset"] = guarded
        super().__init__(config=config, **kwargs)
        if errors:
            self.skip_reason = errors[0]
            self.dataset = datasets.DatasetDict({"test": self.dataset["test"].select([])})
            self.task_docs = self.dataset["test"]
            logger.warning(
                "skipping IQ subtask %s (no score; its groups are partial): %s", self.config.task, self.skip_reason
            )

    def build_all_requests(self, *args: Any, **kwargs: Any) -> None:
        if self.skip_reason is not None:
            self._instances = _NoInstances()
            return None
        return super().build_all_requests(*args, **kwargs)

    def apply_filters(self) -> Any:
        return None if self.skip_reason is not None else super().apply_filters()


class _NoInstances(list):
    """The request list of a skipped task: empty, but lm-eval 0.4.13's ``evaluate`` reads
    ``task.instances[0].filtered_resps`` to find the filters of a task; here there are none."""

    class _Nothing:
        filtered_resps: dict[str, Any] = {}

    def __getitem__(self, index: Any) -> Any:
        if not len(self) and index == 0:
            return self._Nothing()
        return super().__getitem__(index)
