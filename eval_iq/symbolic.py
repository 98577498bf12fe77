"""Symbolic mapping instances: classification with label words replaced by meaningless symbols.

For subtask ``name`` and ``seed``:

* **Symbols**: ``K`` distinct strings (K = number of labels) of 2-3 characters from
  :data:`SYMBOL_ALPHABET` (punctuation only, so never a word), none a prefix of another, none
  occurring anywhere in the dataset's rendered texts, none reading as an operator
  (:func:`reads_as_operator`: no ``=``, no doubled character, no pair such as ``<>`` or ``|>``). Fixed per (subtask, seed); ``choices`` of
  every instance list them in this order.
* **Evaluation records**: a seeded permutation of the labelled validation records with distinct
  rendered texts (:func:`unique_positions`); instance ``i`` is its ``i``-th element; up to
  ``size`` (default 300) instances, all records if fewer.
* **Label -> symbol assignment** is drawn per instance and shown only by the demonstrations, so
  the model must learn the mapping in context. The gold symbol's position follows a balanced
  schedule (each block of K consecutive instances uses every symbol once as the gold answer,
  in a seeded order), so a model that always outputs the same symbol scores 1/K (up to one
  partial block) whatever the class balance of the data.
* **Demonstrations**: ``shots`` per label (default 2), drawn without replacement from the
  training split; if the training split has too few records of a label (FewGLUE's WSC train
  has no ``false``), from training plus validation records other than the query. A record whose
  rendered text equals the query's is never a demonstration. **Length bound**: every
  demonstration costs at most an equal share of what :data:`PROMPT_TOKEN_BUDGET` leaves after the
  query (estimated tokens, :mod:`eval_iq.prompt_budget`); when no pool has enough such records
  of a label, its cheapest records are used (:func:`pick_demonstrations`). Order: rounds
  of one demonstration per label, each round a random permutation that never starts with the
  previous round's last label, so no label appears twice in a row.
"""

from __future__ import annotations

import math
import os
import random
from collections.abc import Sequence
from typing import Any

from eval_iq.errors import MalformedDataError
from eval_iq.instances import join_blocks, make_instance, rng_for
from eval_iq.prompt_budget import PROMPT_TOKEN_BUDGET, estimate_tokens
from eval_iq.symbolic_data import SOURCES, SourceData, load_source

SYMBOL_ALPHABET = "!#$%&*+<>?@^|~"  # no "=", "-", "/", ".": they build most operators
#: character pairs that read as an operator or markup in common languages; a symbol containing one
#: is never drawn (any doubled character is refused too: &&, ||, ++, **, <<, >>, ??, !!, ~~, ...)
OPERATOR_PAIRS = ("<>", "|>", "<|", "!~", "?:", "<$", "$>", "<*", "*>", "<&", "&>", "<@", "@>", "#!")


def reads_as_operator(symbol: str) -> bool:
    """True for a symbol that contains a doubled character or one of :data:`OPERATOR_PAIRS`."""
    return any(a == b for a, b in zip(symbol, symbol[1:])) or any(p in symbol for p in OPERATOR_PAIRS)


def draw_symbols(subtask: str, seed: int, k: int, corpus: str) -> list[str]:
    """``k`` symbols for ``(subtask, seed)`` that do not occur in ``corpus`` (see module doc)."""
    rng = rng_for(subtask, seed, "symbols", "symbols")
    chosen: list[str] = []
    for _ in range(100_000):
        cand = "".join(rng.choice(SYMBOL_ALPHABET) for _ in range(rng.choice((2, 3))))
        if reads_as_operator(cand) or any(c.startswith(cand) or cand.startswith(c) for c in chosen) or cand in corpus:
            continue
        chosen.append(cand)
        if len(chosen) == k:
            return chosen
    raise RuntimeError(f"{subtask}: could not draw {k} symbols absent from the data")


def interleaved_order(rng: random.Random, labels: list[str], rounds: int) -> list[str]:
    """``rounds`` rounds, each a permutation of ``labels``; never the same label twice in a row."""
    order: list[str] = []
    for _ in range(rounds):
        perm = labels[:]
        rng.shuffle(perm)
        if order and len(perm) > 1 and perm[0] == order[-1]:
            j = rng.randrange(1, len(perm))
            perm[0], perm[j] = perm[j], perm[0]
        order += perm
    return order


def _symbols_for(name: str, seed: int, data: SourceData) -> tuple[str, ...]:
    source = SOURCES[name]
    corpus = "\n".join(source.render(r) for r in data.eval_records + data.shot_records)
    return tuple(draw_symbols(name, seed, len(source.labels), corpus))


def unique_positions(records: Sequence[dict[str, Any]], texts: list[str]) -> list[int]:
    """Positions of the records that can be queries: the first record of each rendered text, in
    file order. Copies of a text are dropped (CLUEWSC's FewCLUE dev repeats 32 texts, WSC 3);
    a text that occurs with different labels is dropped altogether (its gold is ambiguous)."""
    first: dict[str, int] = {}
    labels: dict[str, set[str]] = {}
    for j, (rec, text) in enumerate(zip(records, texts)):
        first.setdefault(text, j)
        labels.setdefault(text, set()).add(rec["label"])
    return [j for text, j in first.items() if len(labels[text]) == 1]


def _order(name: str, seed: int, n: int) -> list[int]:
    order = list(range(n))
    rng_for(name, seed, "order", "order").shuffle(order)
    return order


class _Pool:
    """Records of one label with their rendered texts (indexed by text for fast exclusion) and
    the estimated token cost of each as a demonstration block."""

    def __init__(self, records: list[dict[str, Any]], texts: list[str], answer_prefix: str) -> None:
        self.records = records
        self.by_text: dict[str, list[int]] = {}
        for j, t in enumerate(texts):
            self.by_text.setdefault(t, []).append(j)
        self.cost = [estimate_tokens(f"{t}\n{answer_prefix} ###\n\n") for t in texts]

    def __len__(self) -> int:
        return len(self.records)

    def fitting(self, excluded: set[int], cap: int) -> list[int]:
        return [j for j in range(len(self.records)) if j not in excluded and self.cost[j] <= cap]


def pick_demonstrations(
    rng: random.Random, pools: tuple[_Pool, _Pool], query_text: str, shots: int, cap: int
) -> list[dict[str, Any]] | None:
    """``shots`` records of one label for one query (``None`` if the label has too few).

    Candidates are never the query nor a record rendering identically. From the first pool (train)
    or else the second (train + validation), a random sample of records whose estimated cost is at
    most ``cap`` tokens; if neither pool has ``shots`` such records, the ``shots`` cheapest of the
    second pool (so long-text datasets stay within the prompt budget as far as the data allows).
    """
    for pool in pools:
        fitting = pool.fitting(set(pool.by_text.get(query_text, ())), cap)
        if len(fitting) >= shots:
            return [pool.records[j] for j in rng.sample(fitting, shots)]
    last = pools[-1]
    candidates = last.fitting(set(last.by_text.get(query_text, ())), math.inf)  # type: ignore[arg-type]
    if len(candidates) < shots:
        return None
    return [last.records[j] for j in sorted(candidates, key=lambda j: (last.cost[j], j))[:shots]]


def generate_symbolic(
    name: str, seed: int, size: int, shots: int, data_dir: str | os.PathLike[str] | None
) -> list[dict[str, Any]]:
    """Instances ``0 .. min(size, #validation records) - 1`` of symbolic subtask ``name``."""
    source = SOURCES[name]
    data = load_source(name, data_dir)
    symbols = list(_symbols_for(name, seed, data))
    labels = list(source.labels)
    k = len(labels)
    eval_texts = [source.render(r) for r in data.eval_records]
    shot_texts = [source.render(r) for r in data.shot_records]
    train = {
        lab: _Pool(
            [r for r in data.shot_records if r["label"] == lab],
            [t for r, t in zip(data.shot_records, shot_texts) if r["label"] == lab],
            source.answer_prefix,
        )
        for lab in labels
    }
    # fallback pools (train + validation) for labels the training split has too few of
    both = {
        lab: _Pool(
            train[lab].records + [r for r in data.eval_records if r["label"] == lab],
            [t for r, t in zip(data.shot_records, shot_texts) if r["label"] == lab]
            + [t for r, t in zip(data.eval_records, eval_texts) if r["label"] == lab],
            source.answer_prefix,
        )
        for lab in labels
    }
    positions = unique_positions(data.eval_records, eval_texts)
    order = _order(name, seed, len(positions))
    out = []
    for i in range(min(size, len(order))):
        query_pos = positions[order[i]]
        query = data.eval_records[query_pos]
        query_text = eval_texts[query_pos]
        rng = rng_for(name, seed, i)
        block = list(range(k))
        rng_for(name, seed, i // k, "gold-schedule").shuffle(block)
        gold = block[i % k]
        rest = [s for s in range(k) if s != gold]
        rng.shuffle(rest)
        others = [lab for lab in labels if lab != query["label"]]
        mapping = {query["label"]: symbols[gold], **{lab: symbols[s] for lab, s in zip(others, rest)}}

        # demonstrations share what the prompt budget leaves after the query
        cap = (PROMPT_TOKEN_BUDGET - estimate_tokens(f"{query_text}\n{source.answer_prefix}")) // max(1, shots * k)
        chosen: dict[str, list[dict[str, Any]]] = {}
        for lab in labels:
            picks = pick_demonstrations(rng, (train[lab], both[lab]), query_text, shots, cap)
            if picks is not None:
                chosen[lab] = picks
            else:
                raise MalformedDataError(
                    f"{name}: too few records with label {lab!r} for {shots} demonstrations per label "
                    f"({data.origin['shots']}, {data.origin['eval']}); lower --shots"
                )
        blocks = []
        shot_labels = interleaved_order(rng, labels, shots)
        for lab in shot_labels:
            rec = chosen[lab].pop()
            blocks.append(f"{source.render(rec)}\n{source.answer_prefix} {mapping[lab]}")
        blocks.append(f"{query_text}\n{source.answer_prefix}")
        meta = {
            "source": data.origin["eval"],
            "source_position": query_pos,
            "label": query["label"],
            "mapping": mapping,
            "shot_labels": shot_labels,
        }
        out.append(
            make_instance(name, seed, i, join_blocks(blocks), symbols[gold], choices=symbols, gold=gold, meta=meta)
        )
    return out
