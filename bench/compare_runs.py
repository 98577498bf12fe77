"""Compare two runs' metrics bit for bit: ``python bench/compare_runs.py BASE_RUN_DIR NEW_RUN_DIR``.

For a staged run (``stage<i>-<name>/metrics.jsonl``) or a single run (``metrics.jsonl``), every step
record's training numbers — loss, lr, grad_norm, val_loss, mask_value, consumed_samples, tokens,
skipped — must be equal (not close): what a refactor that claims "behaviour unchanged" must keep.
Timings (step_time_s, tokens_per_s, MFU) are left out. Prints the first differences per file and
``IDENTICAL`` or ``DIFFERENT``; exits 1 when different.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

KEYS = ("step", "loss", "lr", "grad_norm", "val_loss", "mask_value", "consumed_samples", "tokens", "skipped")


def metrics_files(run: Path) -> list[Path]:
    staged = sorted(run.glob("stage*/metrics.jsonl"))
    return [p.relative_to(run) for p in staged] or [Path("metrics.jsonl")]


def records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    base, new = (Path(a) for a in argv)
    same = True
    for rel in metrics_files(base):
        a, b = records(base / rel), records(new / rel) if (new / rel).is_file() else []
        diffs = [(x["step"], k, x.get(k), y.get(k)) for x, y in zip(a, b) for k in KEYS if x.get(k) != y.get(k)]
        same &= not diffs and len(a) == len(b)
        print(f"{rel}: {len(a)} vs {len(b)} records, {len(diffs)} differences {diffs[:3]}")
    print("IDENTICAL" if same else "DIFFERENT")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
