"""Print the counts of an adversarial log: ``python tally.py LOG``."""

from __future__ import annotations

import json
import sys
from collections import Counter

OUTCOMES = ("ok", "clean_error", "unclear_error", "unexpected_error", "silent_wrong", "traceback", "hang")


def main(path: str) -> None:
    rows = [json.loads(line) for line in open(path, encoding="utf-8") if line.strip()]
    by_class: dict[int, Counter[str]] = {}
    for r in rows:
        by_class.setdefault(r["issue_class"], Counter())[r["outcome"]] += 1
    print("class " + " ".join(f"{o:>16}" for o in OUTCOMES) + "   total")
    total: Counter[str] = Counter()
    for c in sorted(by_class):
        total.update(by_class[c])
        print(f"{c:>5} " + " ".join(f"{by_class[c][o]:>16}" for o in OUTCOMES) + f"   {sum(by_class[c].values())}")
    print("  all " + " ".join(f"{total[o]:>16}" for o in OUTCOMES) + f"   {sum(total.values())}")


if __name__ == "__main__":
    main(sys.argv[1])
