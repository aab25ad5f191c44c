"""Split generators: ``explicit``, ``random-groups`` and ``context-ood``, and the
shared helpers (calibration fold, OOD labels) every generator uses.

Each receives the dataset's non-control groups (group id -> GroupInfo) and is
deterministic for ``(groups, params, seed)``: groups are always visited in
sorted order and randomness comes only from ``numpy.random.default_rng(seed)``.
Parameters may arrive as CLI strings (``"0.2"``, ``"a,b"``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Annotated, Any, ClassVar, Protocol, TypeVar

import numpy as np
from perturbfm.canonical.labels import split_combo
from perturbfm.dataset import GroupInfo, canonical_perturbation
from perturbfm.errors import ConfigError
from perturbfm.interfaces import SplitAssignment, SplitGenerator
from perturbfm.options import ConfigModel, Float, Name, options_help, validate
from pydantic import BaseModel, BeforeValidator, Field
from pydantic_core import PydanticCustomError

ParamsT = TypeVar("ParamsT", bound=BaseModel)


def _group_ids(value: Any) -> Any:
    if value is None:
        return []
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    return list(value) if isinstance(value, tuple) else value


def _label(value: Any) -> Any:
    """A context / covariate label: text, or a number written without quotes in YAML."""
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise PydanticCustomError("config_value", "must be a name, got {got}", {"got": repr(value)})
    return str(value).strip()


#: Group ids: a list, or a comma-separated string.
GroupIds = Annotated[list[Name], BeforeValidator(_group_ids)]
#: A context or covariate label.
Label = Annotated[str, BeforeValidator(_label)]


class SplitParams(ConfigModel):
    """Parameters every generator accepts; values may arrive as CLI text (``--param x=0.2``)."""

    coerce_strings: ClassVar[bool] = True
    calibration_fraction: Float = Field(
        0.0, ge=0.0, lt=1.0, description="fraction of the training groups moved to a calibration fold (for "
        "conformal intervals); drawn with the split's seed, at least one group when > 0")


class ValParams(SplitParams):
    """:class:`SplitParams` plus ``val_fraction`` of the training groups."""

    val_fraction: Float = Field(0.0, ge=0.0, lt=1.0, description="fraction of the training groups moved to "
                                "validation")


class ConfiguredGenerator(Protocol):
    """A generator (instance or class) that declares its parameters' typed model,
    as every generator of this package does (``config_model``)."""

    name: ClassVar[str]
    config_model: ClassVar[type[ConfigModel]]


def parse_params(gen: ConfiguredGenerator | type[ConfiguredGenerator], params: Mapping[str, Any]) -> Any:
    """Validate ``params`` against the generator's ``config_model``.

    Raises:
        ConfigError: an unknown parameter or a malformed value, naming the
            parameter and a fix built from the field.
    """
    model = gen.config_model
    return validate(model, dict(params), what=f"split generator {gen.name!r}")


def _check_groups(groups: Mapping[str, GroupInfo]) -> list[str]:
    if not groups:
        raise ConfigError("the dataset has no perturbed groups to split", field="groups",
                          fix="import a dataset with perturbed (non-control) cells")
    return sorted(groups)


def _n_of(fraction: float, n: int) -> int:
    return int(round(fraction * n))


def _carve(ids: Sequence[str], fraction: float, rng: np.random.Generator) -> set[str]:
    """A random ``fraction`` of ``ids`` (at least one when the fraction is > 0)."""
    if fraction <= 0 or not ids:
        return set()
    k = min(len(ids), max(1, _n_of(fraction, len(ids))))
    order = rng.permutation(len(ids))
    return {ids[i] for i in order[:k]}


#: The option every generator accepts (see :func:`with_calibration`).
CALIBRATION_OPTION = options_help(SplitParams)


def with_calibration(res: SplitAssignment, params: Mapping[str, Any] | BaseModel, seed: int) -> SplitAssignment:
    """Move ``calibration_fraction`` of the training groups to ``calibration``.

    Implemented once for every generator: the draw uses its own stream
    (``default_rng([seed, 1])``) over the sorted training ids, so the other roles
    never change with the fraction; at least one training group always remains.
    """
    if isinstance(params, BaseModel):
        frac = float(getattr(params, "calibration_fraction", 0.0))
    else:
        raw = {"calibration_fraction": params.get("calibration_fraction", 0.0)}
        frac = validate(SplitParams, raw, what="split parameters").calibration_fraction
    if frac <= 0:
        return res
    train = sorted(g for g, r in res.assignments.items() if r == "train")
    calib = _carve(train, frac, np.random.default_rng([int(seed), 1]))
    if len(calib) >= len(train):
        raise ConfigError(f"calibration_fraction {frac} leaves no training group ({len(train)} available)",
                          field="calibration_fraction", fix="lower calibration_fraction")
    assignments = {g: "calibration" if g in calib else r for g, r in res.assignments.items()}
    notes = (res.notes + f"; {len(calib)} of {len(train)} training groups moved to calibration "
             f"(calibration_fraction {frac}, seed {seed})")
    return SplitAssignment(assignments=assignments, ood=res.ood, labels=res.labels, notes=notes)


def seen_perturbation_labels(
    groups: Mapping[str, GroupInfo], assignments: Mapping[str, str]
) -> tuple[dict[str, bool], dict[str, str]]:
    """OOD flags and labels of the evaluated (test) groups: a test group is out of
    distribution when its perturbation is trained in no context
    (``unseen_perturbation``), else ``seen_perturbation_other_context``."""
    trained = {groups[g].perturbation for g, r in assignments.items() if r == "train"}
    ood, labels = {}, {}
    for g, r in assignments.items():
        if r == "test":
            unseen = groups[g].perturbation not in trained
            ood[g] = unseen
            labels[g] = "unseen_perturbation" if unseen else "seen_perturbation_other_context"
    return ood, labels


def _contexts(groups: Mapping[str, GroupInfo]) -> list[str]:
    return sorted({g.context for g in groups.values()})


class ExplicitParams(SplitParams):
    """Parameters of ``explicit``."""

    test: GroupIds = Field(default_factory=list, description="group ids to hold out for testing (list, or "
                           "comma-separated string); at least one is required", json_schema_extra={
                               "type_label": "a list of group ids"})
    val: GroupIds = Field(default_factory=list, description="group ids for validation",
                          json_schema_extra={"type_label": "a list of group ids"})
    calibration: GroupIds = Field(default_factory=list, description="group ids for calibration",
                                  json_schema_extra={"type_label": "a list of group ids"})


class ExplicitSplit(SplitGenerator):
    """Roles given by the user; every group not named is trained on."""

    name: ClassVar[str] = "explicit"
    description: ClassVar[str] = "the user lists the test (and optional val / calibration) group ids"
    config_model: ClassVar[type[ConfigModel]] = ExplicitParams
    options: ClassVar[dict[str, str]] = options_help(ExplicitParams)

    def generate(self, groups: Mapping[str, GroupInfo], params: Mapping[str, Any], seed: int) -> SplitAssignment:
        """Assign the named groups; the rest go to train. ``seed`` is unused."""
        p = parse_params(self, params)
        ids = _check_groups(groups)
        named: dict[str, str] = {}
        if p.calibration and p.calibration_fraction:
            raise ConfigError("give calibration groups or calibration_fraction, not both",
                              field="calibration_fraction", fix="drop one of them")
        for role in ("test", "val", "calibration"):
            for gid in getattr(p, role):
                if gid in named:
                    raise ConfigError(
                        f"group {gid!r} is named twice (as {named[gid]} and {role})", field=role,
                        fix="name each group in one role only",
                    )
                named[gid] = role
        if not any(r == "test" for r in named.values()):
            raise ConfigError("the explicit split needs at least one test group", field="test",
                              fix=f"pass test=<group id>[,<group id>...], e.g. test={ids[0]}")
        unknown = sorted(g for g in named if g not in groups)
        if unknown:
            hints = []
            for u in unknown:
                canon = canonical_perturbation(split_combo(u, "+")) if "@" not in u else u
                matches = [g for g in ids if groups[g].perturbation in (u, canon)]
                if matches:
                    hints.append(f"{u!r} is not a group id; matching groups: {', '.join(matches[:6])}")
            examples = ", ".join(ids[:5])
            raise ConfigError(
                f"unknown group id(s): {', '.join(unknown)}" + ("; " + "; ".join(hints) if hints else ""),
                field=named[unknown[0]],
                fix=f"use group ids '<perturbation>@<context>[@<covariates>]', e.g. {examples}",
            )
        assignments = {g: named.get(g, "train") for g in ids}
        counts = {r: sum(1 for v in assignments.values() if v == r) for r in ("train", "val", "test", "calibration")}
        notes = "explicit split given by the user: " + ", ".join(f"{k}={v}" for k, v in counts.items())
        return with_calibration(SplitAssignment(assignments=assignments, ood=None, labels=None, notes=notes),
                                p, seed)


class RandomGroupsParams(ValParams):
    """Parameters of ``random-groups``."""

    test_fraction: Float = Field(0.2, gt=0.0, lt=1.0, description="fraction of (eligible) groups held out for "
                                 "testing (at least one group)")
    val_fraction: Float = Field(0.0, ge=0.0, lt=1.0, description="fraction of (eligible) groups for validation")
    context: Label | None = Field(None, description="draw held-out groups only from this context (others all "
                                     "train); null: every context")


class RandomGroupsSplit(SplitGenerator):
    """A seeded random fraction of groups held out (optionally within one context)."""

    name: ClassVar[str] = "random-groups"
    description: ClassVar[str] = "random held-out groups (unseen perturbations), seeded"
    config_model: ClassVar[type[ConfigModel]] = RandomGroupsParams
    options: ClassVar[dict[str, str]] = options_help(RandomGroupsParams)

    def generate(self, groups: Mapping[str, GroupInfo], params: Mapping[str, Any], seed: int) -> SplitAssignment:
        """Permute the sorted eligible ids with ``default_rng(seed)`` and cut."""
        p = parse_params(self, params)
        ids = _check_groups(groups)
        test_f, val_f = p.test_fraction, p.val_fraction
        if test_f + val_f >= 1:
            raise ConfigError(f"test_fraction + val_fraction must be < 1, got {test_f + val_f}",
                              field="val_fraction", fix="lower one of the fractions")
        ctx = p.context or None
        if ctx is not None and ctx not in _contexts(groups):
            raise ConfigError(f"unknown context {ctx!r}", field="context",
                              fix=f"use one of: {', '.join(_contexts(groups))}")
        eligible = [g for g in ids if ctx is None or groups[g].context == ctx]
        if len(eligible) < 2:
            raise ConfigError(f"only {len(eligible)} eligible group(s); need at least 2 to split",
                              field="context" if ctx else "groups", fix="choose a context with more groups")
        rng = np.random.default_rng(int(seed))
        order = [eligible[i] for i in rng.permutation(len(eligible))]
        n_test = min(len(eligible) - 1, max(1, _n_of(test_f, len(eligible))))
        n_val = min(len(eligible) - 1 - n_test, _n_of(val_f, len(eligible)))
        if val_f > 0 and n_val == 0 and len(eligible) - 1 - n_test > 0:
            n_val = 1
        test, val = set(order[:n_test]), set(order[n_test : n_test + n_val])
        assignments = {g: "test" if g in test else "val" if g in val else "train" for g in ids}
        where = f" within context {ctx!r}" if ctx else ""
        notes = (f"random groups{where}: {n_test} test, {n_val} val of {len(eligible)} eligible groups "
                 f"(seed {seed}; numpy default_rng permutation of sorted ids); a test group is OOD when "
                 "its perturbation is trained in no context")
        ood, labels = seen_perturbation_labels(groups, assignments)
        return with_calibration(SplitAssignment(assignments=assignments, ood=ood, labels=labels, notes=notes),
                                p, seed)


class ContextOODParams(ValParams):
    """Parameters of ``context-ood``."""

    context: Label | None = Field(None, description="the held-out context (required)")


class ContextOODSplit(SplitGenerator):
    """Hold out one whole context (cell line): every group of it is tested."""

    name: ClassVar[str] = "context-ood"
    description: ClassVar[str] = "out-of-distribution context: all groups of one context are test"
    config_model: ClassVar[type[ConfigModel]] = ContextOODParams
    options: ClassVar[dict[str, str]] = options_help(ContextOODParams)

    def generate(self, groups: Mapping[str, GroupInfo], params: Mapping[str, Any], seed: int) -> SplitAssignment:
        """Test = the groups of ``context``; val carved from the rest with ``seed``."""
        p = parse_params(self, params)
        ids = _check_groups(groups)
        contexts = _contexts(groups)
        ctx = p.context or ""
        if not ctx:
            raise ConfigError("context-ood needs the held-out context", field="context",
                              fix=f"pass context=<one of {', '.join(contexts)}>")
        if ctx not in contexts:
            raise ConfigError(f"unknown context {ctx!r}", field="context",
                              fix=f"use one of: {', '.join(contexts)}")
        val_f = p.val_fraction
        test = [g for g in ids if groups[g].context == ctx]
        rest = [g for g in ids if groups[g].context != ctx]
        if not rest:
            raise ConfigError(f"context {ctx!r} is the only context; nothing is left to train on",
                              field="context", fix="use a dataset with several contexts")
        val = _carve(rest, val_f, np.random.default_rng(int(seed)))
        if val and len(val) == len(rest):
            val.discard(sorted(val)[0])
        assignments = {g: "test" if g in test else "val" if g in val else "train" for g in ids}
        notes = (f"context {ctx!r} held out: its {len(test)} groups are test (all out of distribution: "
                 f"the context is unseen in training); {len(val)} val groups drawn from the other "
                 f"contexts with seed {seed}")
        _, labels = seen_perturbation_labels(groups, assignments)
        return with_calibration(SplitAssignment(assignments=assignments, ood={g: True for g in test},
                                                labels=labels, notes=notes), p, seed)


GENERATORS: tuple[type[SplitGenerator], ...] = (ExplicitSplit, RandomGroupsSplit, ContextOODSplit)
