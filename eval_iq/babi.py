"""Reader for bAbI v1.1 task files (``qa1_*.txt``, ``qa2_*.txt``) and their vocabulary.

Used to check that the procedural anti-interference generators speak bAbI's language and to
validate reference solvers on the real data. Format: one numbered line per sentence; numbering
restarts at 1 for a new story; question lines are ``N question<TAB>answer<TAB>supporting ids``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from eval_iq.errors import DataNotFoundError, MalformedDataError

_LINE = re.compile(r"^(\d+) (.*)$")


@dataclass(frozen=True)
class BabiQuestion:
    """One question with the story sentences that precede it (questions excluded)."""

    story: tuple[str, ...]
    question: str
    answer: str
    supporting: tuple[int, ...]


def load_babi(path: str | Path) -> list[BabiQuestion]:
    """Parse a bAbI file. Raises DataNotFoundError / MalformedDataError naming file and line."""
    path = Path(path)
    if not path.is_file():
        raise DataNotFoundError(f"bAbI file not found: {path}")
    questions: list[BabiQuestion] = []
    story: list[str] = []
    last_id = 0
    with path.open(encoding="utf-8") as fh:
        for lineno, raw in enumerate(fh, 1):
            line = raw.rstrip("\n")
            if not line.strip():
                continue
            m = _LINE.match(line)
            if not m:
                raise MalformedDataError(f"{path}:{lineno}: expected '<number> <text>', got {line!r}")
            num, text = int(m.group(1)), m.group(2)
            if num == 1:
                story = []
            elif num != last_id + 1:
                raise MalformedDataError(f"{path}:{lineno}: line number {num} does not follow {last_id}")
            last_id = num
            if "\t" in text:
                parts = text.split("\t")
                if len(parts) != 3 or not parts[1]:
                    raise MalformedDataError(
                        f"{path}:{lineno}: question lines need 'question<TAB>answer<TAB>ids', got {line!r}"
                    )
                ids = tuple(int(x) for x in parts[2].split())
                questions.append(BabiQuestion(tuple(story), parts[0].strip(), parts[1], ids))
            else:
                story.append(text.strip())
    if not questions:
        raise MalformedDataError(f"{path}: no questions found; is this a bAbI task file?")
    return questions


def vocabulary(sentences: list[str] | tuple[str, ...]) -> set[str]:
    """Lower-cased word set of some sentences (punctuation stripped)."""
    return {w.lower() for s in sentences for w in re.findall(r"[A-Za-z]+", s)}
