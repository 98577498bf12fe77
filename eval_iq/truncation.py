"""Which prompts a model saw truncated: measured after a run, per subtask.

lm-eval's ``hf`` backend and :class:`eval_iq.adapter.BackendLM` both keep only the last tokens of a
prompt that does not fit: ``max_length + 1`` tokens of context + continuation for a
log-likelihood request, ``max_length - max_gen_toks`` context tokens for generation. A truncated
prompt has lost its first demonstrations, so its score measures something else. This module
re-tokenises the logged requests of a run with the model's own tokenizer and counts, per
subtask, the documents that had at least one truncated request. ``flm iq`` records the counts in
``results.json`` and the report, and warns.
"""

from __future__ import annotations

import logging
from typing import Any

logger = logging.getLogger(__name__)


def _request_tokens(lm: Any, args: tuple) -> tuple[int, int]:
    """(tokens the request needs, tokens the backend keeps) for one logged request."""
    context, second = args[0], args[1]
    if isinstance(second, dict):  # generate_until: (context, generation kwargs)
        max_gen = int(second.get("max_gen_toks", getattr(lm, "max_gen_toks", 256)))
        return len(lm.tok_encode(context)), int(lm.max_length) - max_gen
    if not context:  # loglikelihood with an empty context: nothing to truncate on the left
        return len(lm.tok_encode(second)), int(lm.max_length) + 1
    ctx, cont = lm._encode_pair(context, second)
    return len(ctx) + len(cont), int(lm.max_length) + 1


def count_truncated(lm: Any, samples: list[dict[str, Any]]) -> dict[str, int]:
    """``{"truncated": documents with a truncated request, "n": documents, "max_tokens": the
    longest request in tokens, "limit": the tokens kept}`` for one task's logged samples."""
    truncated = longest = 0
    limit = int(lm.max_length)
    for sample in samples:
        cut = False
        for args in sample.get("arguments", []):
            need, keep = _request_tokens(lm, tuple(args))
            longest, limit = max(longest, need), keep
            cut = cut or need > keep
        truncated += cut
    return {"truncated": truncated, "n": len(samples), "max_tokens": longest, "limit": limit}


def truncation_report(lm: Any, lm_results: dict[str, Any], tasks: dict[str, str]) -> dict[str, dict[str, int]]:
    """Per subtask name (``tasks``: subtask name -> lm-eval task name) the :func:`count_truncated`
    of its logged samples; ``{}`` when ``lm`` has no tokenizer interface (``tok_encode``,
    ``_encode_pair``, ``max_length``). Logs a warning for every subtask with truncated prompts."""
    if not all(hasattr(lm, a) for a in ("tok_encode", "_encode_pair", "max_length")):
        return {}
    out: dict[str, dict[str, int]] = {}
    for name, task in tasks.items():
        samples = lm_results.get("samples", {}).get(task)
        if samples is None:
            continue
        out[name] = counts = count_truncated(lm, samples)
        if counts["truncated"]:
            logger.warning(
                "%s: %d of %d prompts exceed the model's context (longest %d tokens, %d kept) and were "
                "left-truncated, losing demonstrations; the score of this subtask is not comparable",
                task,
                counts["truncated"],
                counts["n"],
                counts["max_tokens"],
                counts["limit"],
            )
    return out
