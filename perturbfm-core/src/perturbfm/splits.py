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
    def from_content(cls, content: Any) -> Split:
        """The split stored as ``content`` (a JSON object); a wrong type of any
        field is a :class:`SplitIntegrityError` naming the field."""
        if not isinstance(content, dict):
            raise SplitIntegrityError(f"a split is a JSON object, got a JSON {_json_type(content)}", field="content",
                                      fix="store splits with `pfm-bench splits create` or `splits import`")
        if content.get("schema") != SPLIT_SCHEMA:
            raise SplitIntegrityError(
                f"unsupported split schema {content.get('schema')!r}", field="schema",
                fix=f"this version reads split schema {SPLIT_SCHEMA}: recreate the split",
            )
        for key in ("dataset", "generator", "params", "seed", "assignments"):
            if key not in content:
                raise SplitIntegrityError(f"the split has no {key!r}", field=key, fix="recreate the split")
        _expect(content, "dataset", str)
        _expect(content, "generator", str)
        _expect(content, "params", dict)
        _expect(content, "seed", int, optional=True)
        _expect_map(content, "assignments", str)
        _expect_map(content, "ood", bool, optional=True)
        _expect_map(content, "labels", str, optional=True)
        _expect(content, "source", dict, optional=True)
        _expect(content, "notes", str, optional=True)
        _expect(content, "family", str, optional=True)
        _expect(content, "control_policy", str, optional=True)
        return cls(
            dataset=content["dataset"],
            generator=content["generator"],
            params=content["params"],
            seed=content["seed"],
            assignments=content["assignments"],
            ood=content.get("ood"),
            labels=content.get("labels"),
            source=content.get("source"),
            notes=content.get("notes") or "",
            family=content.get("family"),
            control_policy=content.get("control_policy", CONTROL_POLICY),
        )


def _json_type(value: Any) -> str:
    return {list: "array", str: "string", int: "number", float: "number", bool: "boolean",
            type(None): "null"}.get(type(value), type(value).__name__)


def _expect(content: dict[str, Any], key: str, kind: type, *, optional: bool = False) -> None:
    value = content.get(key)
    if value is None and optional:
        return
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise SplitIntegrityError(f"split field {key!r} must be a {kind.__name__}, got a JSON {_json_type(value)}",
                                  field=key, fix="recreate the split")


def _expect_map(content: dict[str, Any], key: str, kind: type, *, optional: bool = False) -> None:
    _expect(content, key, dict, optional=optional)
    for k, v in (content.get(key) or {}).items():
        if not isinstance(v, kind):
            raise SplitIntegrityError(f"split field {key!r} maps {k!r} to a JSON {_json_type(v)}, not a "
                                      f"{kind.__name__}", field=key, fix="recreate the split")
