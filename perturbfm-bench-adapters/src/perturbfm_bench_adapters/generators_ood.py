"""Out-of-distribution split generators: ``loco``, ``perturbation-ood``, ``combo``
and ``covariate-transfer``.

Deterministic for ``(groups, params, seed)``: ids and genes are visited in
sorted order and randomness comes only from ``numpy.random.default_rng(seed)``.
Every generator records ``ood`` and ``labels`` for its test groups and accepts
``calibration_fraction`` (see :func:`~perturbfm_bench_adapters.generators.with_calibration`).
Generators with folds expose ``family_members(groups, params)``: the parameter
sets of all folds, used by ``pfm-bench splits create-family``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, ClassVar, Literal

import numpy as np
from perturbfm.dataset import GroupInfo
from perturbfm.errors import ConfigError
from perturbfm.interfaces import SplitAssignment, SplitGenerator
from perturbfm.options import ConfigModel, Float, Int, options_help
from pydantic import Field

from perturbfm_bench_adapters.generators import (
    Label,
    ValParams,
    _carve,
    _check_groups,
    _contexts,
    parse_params,
    seen_perturbation_labels,
    with_calibration,
)


def _val_from_train(assignments: dict[str, str], frac: float, seed: int) -> int:
    """Move ``frac`` of the training groups to ``val`` in place (own stream); returns how many."""
    train = sorted(g for g, r in assignments.items() if r == "train")
    val = _carve(train, frac, np.random.default_rng([int(seed), 2]))
    if val and len(val) >= len(train):
        val.discard(sorted(val)[0])
    for g in val:
        assignments[g] = "val"
    return len(val)


class LocoParams(ValParams):
    """Parameters of ``loco`` (give exactly one of ``fold`` and ``context``)."""

    fold: Int | None = Field(None, ge=0, description="index of the held-out context among the sorted "
                                "contexts (0-based)")
    context: Label | None = Field(None, description="the held-out context by name (instead of fold)")


class PerturbationOODParams(ValParams):
    """Parameters of ``perturbation-ood``."""

    test_fraction: Float = Field(0.2, gt=0.0, lt=1.0, description="fraction of the single-perturbation genes "
                                 "held out")
    n_folds: Int | None = Field(None, ge=2, description="instead of test_fraction: split the genes into "
                                   "n folds (seeded) and hold out fold `fold`")
    fold: Int | None = Field(None, ge=0, description="the held-out fold (0-based) when n_folds is given")
    val_fraction: Float = Field(0.0, ge=0.0, lt=1.0, description="fraction of the remaining genes whose groups "
                                "go to validation")
    combos: Literal["test"] = Field("test", description="policy for combinations containing a held-out gene; "
                                    "only 'test': they are tested, labelled combo_unseen_gene (in train they "
                                    "would leak the gene's effect)")


class ComboParams(ValParams):
    """Parameters of ``combo``."""

    single_test_fraction: Float = Field(0.25, ge=0.0, lt=1.0, description="fraction of single-perturbation "
                                        "genes held out as unseen singles (GEARS train_gene_set_size 0.75)")
    combo_seen2_test_fraction: Float = Field(0.25, ge=0.0, lt=1.0, description="fraction of combo_seen2 "
                                             "combinations held out (GEARS combo_seen2_train_frac 0.75)")


class CovariateTransferParams(ValParams):
    """Parameters of ``covariate-transfer``."""

    covariate: Literal["dose", "time"] = Field(description="the canonical pfm_dose / pfm_time column")
    value: Float = Field(description="the held-out value (compared with a relative tolerance of 1e-9)")


class LeaveOneContextOut(SplitGenerator):
    """One fold of leave-one-context-out cross-validation."""

    name: ClassVar[str] = "loco"
    description: ClassVar[str] = "leave-one-context-out CV: fold i holds out the i-th context (sorted)"
    config_model: ClassVar[type[ConfigModel]] = LocoParams
    options: ClassVar[dict[str, str]] = options_help(LocoParams)

    def family_members(self, groups: Mapping[str, GroupInfo], params: Mapping[str, Any]) -> list[dict[str, Any]]:
        """One parameter set per context (all k folds)."""
        base = {k: v for k, v in params.items() if k not in ("fold", "context")}
        return [{**base, "fold": i} for i in range(len(_contexts(groups)))]

    def generate(self, groups: Mapping[str, GroupInfo], params: Mapping[str, Any], seed: int) -> SplitAssignment:
        """Test = every group of the fold's context (all OOD); labels say whether the
        perturbation is trained in another context."""
        p = parse_params(self, params)
        ids, contexts = _check_groups(groups), _contexts(groups)
        if len(contexts) < 2:
            raise ConfigError(f"loco needs at least 2 contexts, the dataset has {len(contexts)}", field="context",
                              fix="use a dataset with several cell lines / types")
        fold, ctx = p.fold, p.context
        if (fold is None) == (ctx is None):
            raise ConfigError("loco needs exactly one of fold or context", field="fold",
                              fix=f"pass fold=0..{len(contexts) - 1} or context=<one of {', '.join(contexts)}>")
        if ctx is not None:
            if str(ctx) not in contexts:
                raise ConfigError(f"unknown context {ctx!r}", field="context", fix=f"use one of: {', '.join(contexts)}")
            fold = contexts.index(str(ctx))
        if not 0 <= int(fold) < len(contexts):
            raise ConfigError(f"fold {fold} out of range", field="fold", fix=f"use 0..{len(contexts) - 1}")
        held = contexts[int(fold)]
        assignments = {g: "test" if groups[g].context == held else "train" for g in ids}
        n_val = _val_from_train(assignments, p.val_fraction, seed)
        _, labels = seen_perturbation_labels(groups, assignments)
        notes = (f"leave-one-context-out fold {fold} of {len(contexts)}: context {held!r} held out "
                 f"({sum(r == 'test' for r in assignments.values())} test groups, all OOD); {n_val} val groups")
        return with_calibration(SplitAssignment(assignments, {g: True for g in labels}, labels, notes), p, seed)


class PerturbationOOD(SplitGenerator):
    """Unseen single-gene perturbations, held out in every context."""

    name: ClassVar[str] = "perturbation-ood"
    description: ClassVar[str] = "unseen single perturbations: held-out genes are tested in every context"
    config_model: ClassVar[type[ConfigModel]] = PerturbationOODParams
    options: ClassVar[dict[str, str]] = options_help(PerturbationOODParams)

    @staticmethod
    def _genes(groups: Mapping[str, GroupInfo]) -> list[str]:
        return sorted({gi.genes[0] for gi in groups.values() if len(gi.genes) == 1})

    def family_members(self, groups: Mapping[str, GroupInfo], params: Mapping[str, Any]) -> list[dict[str, Any]]:
        """One parameter set per fold (needs ``n_folds``)."""
        k = parse_params(self, params).n_folds
        if not k:
            raise ConfigError("a perturbation-ood family needs n_folds", field="n_folds", fix="pass n_folds=5")
        return [{**{k2: v for k2, v in params.items() if k2 != "fold"}, "fold": i} for i in range(k)]

    def generate(self, groups: Mapping[str, GroupInfo], params: Mapping[str, Any], seed: int) -> SplitAssignment:
        """Held-out genes' single groups (all contexts) and every combo holding one go to test."""
        p = parse_params(self, params)
        ids = _check_groups(groups)
        genes = self._genes(groups)
        if len(genes) < 2:
            raise ConfigError(f"only {len(genes)} single-gene perturbation(s); need 2", field="groups",
                              fix="use a dataset with single-gene perturbations")
        order = [genes[i] for i in np.random.default_rng(int(seed)).permutation(len(genes))]
        k, fold = p.n_folds, p.fold
        if k is not None:
            if not 2 <= k <= len(genes) or fold is None or not 0 <= fold < k:
                raise ConfigError(f"need 2 <= n_folds <= {len(genes)} and 0 <= fold < n_folds", field="fold",
                                  fix="pass e.g. n_folds=5 fold=0")
            test_genes = set(order[fold::k])
            how = f"fold {fold} of {k} (genes dealt round-robin from a seeded permutation)"
        else:
            frac = p.test_fraction
            n = min(len(genes) - 1, max(1, round(frac * len(genes))))
            test_genes, how = set(order[:n]), f"test_fraction {frac}"
        rest = [g for g in order if g not in test_genes]
        vf = p.val_fraction
        n_val = min(len(rest) - 1, round(vf * len(rest)) or (1 if vf > 0 else 0))
        val_genes = set(rest[:n_val])
        assignments, labels = {}, {}
        for g in ids:
            gs = set(groups[g].genes)
            if gs & test_genes:
                assignments[g] = "test"
                labels[g] = "unseen_single" if len(gs) == 1 else "combo_unseen_gene"
            elif gs & val_genes:
                assignments[g] = "val"
            else:
                assignments[g] = "train"
        notes = (f"perturbation OOD, {how}: {len(test_genes)} of {len(genes)} single genes held out in every "
                 f"context; combinations containing a held-out gene are test too (never trained, else the gene's "
                 f"effect would leak); {len(val_genes)} genes for validation")
        return with_calibration(SplitAssignment(assignments, {g: True for g in labels}, labels, notes), p, seed)


class ComboSplit(SplitGenerator):
    """Combination generalisation with GEARS subgroups (simulation split)."""

    name: ClassVar[str] = "combo"
    description: ClassVar[str] = ("GEARS-style combination split: test combos labelled combo_seen0/1/2 by how "
                                  "many of their singles are trained; held-out singles are unseen_single")
    config_model: ClassVar[type[ConfigModel]] = ComboParams
    options: ClassVar[dict[str, str]] = options_help(ComboParams)

    def generate(self, groups: Mapping[str, GroupInfo], params: Mapping[str, Any], seed: int) -> SplitAssignment:
        """Seen counts are per context: a combo gene is 'seen' when its single group in
        that context is trained. combo_seen0/1 and unseen singles are test (OOD);
        a seeded fraction of combo_seen2 is test (labelled, not OOD)."""
        p = parse_params(self, params)
        ids = _check_groups(groups)
        sf, cf = p.single_test_fraction, p.combo_seen2_test_fraction
        combos = [g for g in ids if len(groups[g].genes) > 1]
        if not combos:
            raise ConfigError("the dataset has no combination perturbations", field="groups",
                              fix="use random-groups or perturbation-ood for single-perturbation screens")
        rng = np.random.default_rng(int(seed))
        genes = sorted({groups[g].genes[0] for g in ids if len(groups[g].genes) == 1})
        unseen = _carve(genes, sf, rng) if genes else set()
        assignments, labels = {}, {}
        for g in ids:
            if len(groups[g].genes) == 1:
                held = groups[g].genes[0] in unseen
                assignments[g] = "test" if held else "train"
                if held:
                    labels[g] = "unseen_single"
        trained = {(groups[g].context, groups[g].genes[0]) for g, r in assignments.items() if r == "train"}
        seen2 = []
        for g in combos:
            n_seen = sum((groups[g].context, x) in trained for x in groups[g].genes)
            if n_seen >= len(groups[g].genes):
                seen2.append(g)
                assignments[g] = "train"
            else:
                assignments[g], labels[g] = "test", f"combo_seen{n_seen}"
        for g in _carve(seen2, cf, rng):
            assignments[g], labels[g] = "test", "combo_seen2"
        n_val = _val_from_train(assignments, p.val_fraction, seed)
        counts = {lab: sum(v == lab for v in labels.values()) for lab in sorted(set(labels.values()))}
        notes = (f"combination split: {len(unseen)} of {len(genes)} single genes unseen; test subgroups {counts}; "
                 f"combo_seen2 held out with fraction {cf}; {n_val} val groups; seen counted per context")
        ood = {g: lab != "combo_seen2" for g, lab in labels.items()}
        return with_calibration(SplitAssignment(assignments, ood, labels, notes), p, seed)


class CovariateTransfer(SplitGenerator):
    """Hold out one dose or time value (bucket): its groups are test."""

    name: ClassVar[str] = "covariate-transfer"
    description: ClassVar[str] = "a dose or time bucket held out: every group with that value is test"
    config_model: ClassVar[type[ConfigModel]] = CovariateTransferParams
    options: ClassVar[dict[str, str]] = options_help(CovariateTransferParams)

    def generate(self, groups: Mapping[str, GroupInfo], params: Mapping[str, Any], seed: int) -> SplitAssignment:
        """Test = groups whose dose/time equals ``value``; labels say whether the
        perturbation was trained at another value."""
        p = parse_params(self, params)
        ids = _check_groups(groups)
        cov, value = p.covariate, p.value
        vals = {g: getattr(groups[g], cov) for g in ids}
        known = sorted({v for v in vals.values() if v is not None and not math.isnan(v)})
        if not known:
            raise ConfigError(f"the dataset has no numeric {cov} (pfm_{cov})", field="covariate",
                              fix=f"import with covariate_keys naming the {cov} column")
        test = [g for g, v in vals.items() if v is not None and math.isclose(v, value, rel_tol=1e-9)]
        if not test:
            raise ConfigError(f"no group has {cov} {value}", field="value",
                              fix=f"use one of: {', '.join(f'{v:g}' for v in known[:20])}")
        assignments = {g: "test" if g in set(test) else "train" for g in ids}
        n_val = _val_from_train(assignments, p.val_fraction, seed)
        trained = {(groups[g].perturbation, groups[g].context) for g, r in assignments.items() if r == "train"}
        labels = {g: (f"{cov}_transfer" if (groups[g].perturbation, groups[g].context) in trained
                      else f"{cov}_transfer_unseen_perturbation") for g in test}
        notes = (f"{cov} {value:g} held out: {len(test)} test groups (all OOD); {n_val} val groups; "
                 f"other values: {', '.join(f'{v:g}' for v in known if not math.isclose(v, value))}")
        return with_calibration(SplitAssignment(assignments, {g: True for g in test}, labels, notes), p, seed)


OOD_GENERATORS: tuple[type[SplitGenerator], ...] = (LeaveOneContextOut, PerturbationOOD, ComboSplit,
                                                    CovariateTransfer)
