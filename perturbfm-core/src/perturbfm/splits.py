"""The split artifact: an immutable, hash-locked assignment of groups to roles."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from perturbfm.errors import SplitIntegrityError
from perturbfm.hashing import sha256_json
from perturbfm.interfaces import ROLES

SPLIT_SCHEMA = 1
_HEX64 = re.compile(r"^[0-9a-f]{64}$")

#: Stated in every split: control cells are not assigned to roles.
CONTROL_POLICY = (
    "control cells of every context are visible to training and serve as the "
    "reference (control mean) for evaluation; only perturbed groups are assigned"
)


@dataclass(frozen=True)
class Split:
    """A split of one dataset's groups. Its id is the SHA-256 of its canonical
    content, so equal content gives an equal id on any machine."""

    dataset: str
    generator: str
    params: dict[str, Any]
    seed: int | None
    assignments: dict[str, str]
    ood: dict[str, bool] | None = None
    labels: dict[str, str] | None = None
    source: dict[str, Any] | None = None
    notes: str = ""
    family: str | None = None
    control_policy: str = field(default=CONTROL_POLICY)

    def content(self) -> dict[str, Any]:
        """The canonical content the id is computed from."""
        return {
            "schema": SPLIT_SCHEMA,
            "dataset": self.dataset,
            "generator": self.generator,
            "params": self.params,
            "seed": self.seed,
            "assignments": dict(sorted(self.assignments.items())),
            "ood": dict(sorted(self.ood.items())) if self.ood is not None else None,
            "labels": dict(sorted(self.labels.items())) if self.labels is not None else None,
            "source": self.source,
            "notes": self.notes,
            "family": self.family,
            "control_policy": self.control_policy,
        }

    @property
    def id(self) -> str:
        return sha256_json(self.content())

    def groups(self, role: str) -> list[str]:
        """Sorted group ids with ``role``."""
        return sorted(g for g, r in self.assignments.items() if r == role)

    def counts(self) -> dict[str, int]:
        return {r: len(self.groups(r)) for r in ROLES}

    def validate(self) -> None:
        if not _HEX64.match(str(self.dataset)):
            raise SplitIntegrityError(f"split names dataset {self.dataset!r}, which is not a dataset hash",
                                      field="dataset", fix="give the 64-character dataset hash")
        bad = {g: r for g, r in self.assignments.items() if r not in ROLES}
        if bad:
            g, r = next(iter(bad.items()))
            raise SplitIntegrityError(
                f"split assigns group {g!r} to unknown role {r!r}",
                field="assignments",
                fix=f"use one of {', '.join(ROLES)}",
            )
        if not self.groups("test"):
            raise SplitIntegrityError(
                "split has no test groups", field="assignments", fix="hold out at least one group"
            )
        if not self.groups("train"):
            raise SplitIntegrityError(
                "split has no training groups", field="assignments", fix="leave at least one group for training"
            )

    @classmethod
    def from_content(cls, content: dict[str, Any]) -> Split:
        if content.get("schema") != SPLIT_SCHEMA:
            raise SplitIntegrityError(
                f"unsupported split schema {content.get('schema')!r}", field="schema"
            )
        return cls(
            dataset=content["dataset"],
            generator=content["generator"],
            params=content["params"],
            seed=content["seed"],
            assignments=content["assignments"],
            ood=content.get("ood"),
            labels=content.get("labels"),
            source=content.get("source"),
            notes=content.get("notes", ""),
            family=content.get("family"),
            control_policy=content.get("control_policy", CONTROL_POLICY),
        )
