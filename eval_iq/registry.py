"""The list of IQ subtasks, categories and lm-eval groups: names, defaults and chance levels.

This module is pure metadata (no generators, no I/O) so that the CLI, the report, the YAML
renderer and the tests share one source of truth. Generators live in :mod:`eval_iq.generate`.

Naming: a subtask has a short name used on the command line (``counting``) and an lm-eval task
name (``flm_iq_counting``). Symbolic-mapping tasks carry their family in the task name
(``flm_iq_superglue_boolq``, ``flm_iq_clue_afqmc``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

from eval_iq.errors import UnknownSubtaskError

HARNESS_VERSION = "1.1"  # bump when instances or prompts change (1.1: issue 18)

OutputType = Literal["multiple_choice", "generate_until"]

CATEGORIES: dict[str, str] = {
    "symbolic": "Symbolic mapping",
    "rules": "Rule understanding",
    "patterns": "Pattern mining",
    "anti_interference": "Anti-interference",
}


@dataclass(frozen=True)
class SubtaskSpec:
    """Static description of one subtask.

    ``default_shots`` counts demonstrations per label for symbolic mapping (``shots_unit ==
    "per_label"``) and demonstrations in total otherwise. ``chance`` is the expected accuracy of
    a uniform random guess over the candidate answers the prompt offers (``chance_note`` says
    which). ``max_gen_toks`` is the generation budget of a generation subtask; it is at least the
    longest possible answer in characters plus two, so it never truncates a correct answer even
    for a tokenizer that spends one token per character.
    """

    name: str
    task: str
    title: str
    category: str
    output_type: OutputType
    default_size: int
    default_shots: int
    chance: float
    chance_note: str
    family: str | None = None
    shots_unit: Literal["per_label", "total"] = "total"
    max_gen_toks: int | None = None
    in_benchmark: bool = True

    @property
    def is_generation(self) -> bool:
        return self.output_type == "generate_until"


def _symbolic(name: str, family: str, title: str, n_labels: int, in_benchmark: bool = True) -> SubtaskSpec:
    return SubtaskSpec(
        name=name,
        task=f"flm_iq_{family}_{name}",
        title=title,
        category="symbolic",
        family=family,
        output_type="multiple_choice",
        default_size=300,
        default_shots=2,
        shots_unit="per_label",
        chance=1.0 / n_labels,
        chance_note=f"uniform guess among {n_labels} label symbols",
        in_benchmark=in_benchmark,
    )


def _generation(
    name: str, category: str, title: str, size: int, shots: int, chance: float, note: str, max_gen_toks: int
) -> SubtaskSpec:
    return SubtaskSpec(
        name=name,
        task=f"flm_iq_{name}",
        title=title,
        category=category,
        output_type="generate_until",
        default_size=size,
        default_shots=shots,
        chance=chance,
        chance_note=note,
        max_gen_toks=max_gen_toks,
    )


_OPEN = "open-ended exact match: a uniform guess over the answer space is ~0"

SUBTASKS: dict[str, SubtaskSpec] = {
    s.name: s
    for s in (
        _symbolic("boolq", "superglue", "SuperGLUE-IQ BoolQ", 2),
        _symbolic("wic", "superglue", "SuperGLUE-IQ WiC", 2),
        _symbolic("rte", "superglue", "SuperGLUE-IQ RTE", 2),
        _symbolic("wsc", "superglue", "SuperGLUE-IQ WSC", 2),
        _symbolic("afqmc", "clue", "CLUE-IQ AFQMC", 2),
        _symbolic("csl", "clue", "CLUE-IQ CSL", 2),
        _symbolic("ocnli", "clue", "CLUE-IQ OCNLI", 3),
        _symbolic("cluewsc", "clue", "CLUE-IQ CLUEWSC2020", 2),
        # Not part of the spec's groups: an offline stand-in for AFQMC (same task type, real
        # FewCLUE data in ../shared/data). Selectable by name only; no paper reference.
        _symbolic("bustm", "clue", "CLUE-IQ BUSTM (extra)", 2, in_benchmark=False),
        _generation("counting", "rules", "Counting", 148, 0, 0.0, _OPEN, 64),
        _generation("replace_lowercase", "rules", "Replace-Lowercase", 300, 4, 0.0, _OPEN, 32),
        _generation("replace_word", "rules", "Replace-Word", 300, 4, 0.0, _OPEN, 128),
        _generation("head_tail", "patterns", "Head & Tail", 100, 5, 0.0, _OPEN, 32),
        _generation("full_repeating", "patterns", "Full Repeating", 100, 5, 0.0, _OPEN, 192),
        _generation("head_slicing", "patterns", "Head Slicing", 100, 5, 0.0, _OPEN, 64),
        _generation(
            "multi_key_retrieval",
            "anti_interference",
            "Multiple Key Retrieval",
            300,
            2,
            0.25,
            "uniform guess among the 4 keys stated in the context",
            16,
        ),
        _generation(
            "single_supporting_fact",
            "anti_interference",
            "Single Supporting Fact",
            300,
            2,
            1 / 6,
            "uniform guess among the 6 locations of the bAbI world",
            16,
        ),
        _generation(
            "two_supporting_facts",
            "anti_interference",
            "Two Supporting Facts",
            300,
            2,
            1 / 6,
            "uniform guess among the 6 locations of the bAbI world",
            16,
        ),
    )
}

BENCHMARK_SUBTASKS: tuple[str, ...] = tuple(n for n, s in SUBTASKS.items() if s.in_benchmark)

FAMILY_GROUPS: dict[str, str] = {"superglue": "flm_iq_superglue", "clue": "flm_iq_clue"}
CATEGORY_GROUPS: dict[str, str] = {c: f"flm_iq_{c}" for c in CATEGORIES}
TOP_GROUP = "flm_iq"

GROUP_TITLES: dict[str, str] = {
    "flm_iq_superglue": "SuperGLUE-IQ",
    "flm_iq_clue": "CLUE-IQ",
    **{CATEGORY_GROUPS[c]: t for c, t in CATEGORIES.items()},
    TOP_GROUP: "FLM IQ (mean of the four categories)",
}


def group_members() -> dict[str, list[str]]:
    """lm-eval group name -> direct members (task or group names), in report order."""
    members: dict[str, list[str]] = {}
    for family, group in FAMILY_GROUPS.items():
        members[group] = [s.task for s in SUBTASKS.values() if s.in_benchmark and s.family == family]
    members[CATEGORY_GROUPS["symbolic"]] = list(FAMILY_GROUPS.values())
    for cat in ("rules", "patterns", "anti_interference"):
        members[CATEGORY_GROUPS[cat]] = [s.task for s in SUBTASKS.values() if s.in_benchmark and s.category == cat]
    members[TOP_GROUP] = [CATEGORY_GROUPS[c] for c in CATEGORIES]
    return members


def get_subtask(name: str) -> SubtaskSpec:
    """Look up a subtask by short name (``counting``) or lm-eval task name (``flm_iq_counting``)."""
    if name in SUBTASKS:
        return SUBTASKS[name]
    for spec in SUBTASKS.values():
        if spec.task == name:
            return spec
    raise UnknownSubtaskError(f"unknown IQ subtask {name!r}; known subtasks: {', '.join(SUBTASKS)}")


def _selector_map() -> dict[str, list[str]]:
    sel: dict[str, list[str]] = {"all": list(BENCHMARK_SUBTASKS), TOP_GROUP: list(BENCHMARK_SUBTASKS)}
    for cat in CATEGORIES:
        names = [n for n in BENCHMARK_SUBTASKS if SUBTASKS[n].category == cat]
        sel[cat] = names
        sel[CATEGORY_GROUPS[cat]] = names
    for family, group in FAMILY_GROUPS.items():
        names = [n for n in BENCHMARK_SUBTASKS if SUBTASKS[n].family == family]
        sel[family] = names
        sel[group] = names
    return sel


def resolve_subtasks(selection: str | Iterable[str] | None) -> list[SubtaskSpec]:
    """Turn a user selection into subtask specs, in registry order, without duplicates.

    ``selection`` is ``None``/``"all"`` (the spec's 17 subtasks), or names separated by commas:
    subtask names, lm-eval task names, categories (``rules``), families (``superglue``) or group
    names (``flm_iq_patterns``). Raises :class:`UnknownSubtaskError` naming every bad entry.
    """
    if selection is None:
        items: Sequence[str] = ["all"]
    elif isinstance(selection, str):
        items = [selection]
    else:
        items = list(selection)
    tokens = [t.strip() for item in items for t in item.split(",") if t.strip()]
    if not tokens:
        raise UnknownSubtaskError("empty subtask selection; use 'all' or names such as 'counting,boolq'")
    selectors = _selector_map()
    chosen: set[str] = set()
    unknown: list[str] = []
    for tok in tokens:
        if tok in selectors:
            chosen.update(selectors[tok])
            continue
        try:
            chosen.add(get_subtask(tok).name)
        except UnknownSubtaskError:
            unknown.append(tok)
    if unknown:
        raise UnknownSubtaskError(
            f"unknown IQ subtask(s): {', '.join(map(repr, unknown))}. Valid: 'all', categories "
            f"({', '.join(CATEGORIES)}), families (superglue, clue), group names, or subtasks "
            f"({', '.join(SUBTASKS)})"
        )
    return [s for n, s in SUBTASKS.items() if n in chosen]
