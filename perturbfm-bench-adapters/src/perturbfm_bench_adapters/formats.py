"""Format adapters for published benchmark files: ``perturbench``, ``scperturb``
and ``gears``.

Each is the generic :class:`~perturbfm_bench_adapters.anndata_adapter.AnnDataAdapter`
with the format's defaults; ``scperturb`` additionally combines extra
perturbation columns (``perturbation_2`` ...) and can map guide-level labels to
genes. Every option of the generic adapter (``backed``, ``expression``,
``obs_filter`` ...) is accepted too.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import anndata as ad
import numpy as np
import pandas as pd
from perturbfm.canonical.labels import split_combo
from perturbfm.canonical.obs import head
from perturbfm.dataset import COMBO_DELIMITER, CONTROL
from perturbfm.errors import DatasetValidationError
from perturbfm.interfaces import AdapterResult

from perturbfm_bench_adapters._options import as_str_list
from perturbfm_bench_adapters.anndata_adapter import DEFAULT_CHUNK, AnnDataAdapter, Prepare

#: The generic adapter's options and their defaults.
GENERIC_DEFAULTS: dict[str, Any] = {
    "perturbation_key": "perturbation", "control": CONTROL, "combo_delimiter": COMBO_DELIMITER,
    "context_keys": (), "covariate_keys": (), "expression": "auto", "obs_filter": None,
    "backed": False, "chunk_size": DEFAULT_CHUNK, "gene_name_key": None, "layer": None, "licence": None,
    "citation": None, "gene_symbol_key": None, "perturbation_kind": None, "perturbation_kind_key": None,
}
#: Joins the genes of a derived perturbation column; cannot occur in gene names.
_JOIN = "\x1f"


class FormatAdapter(AnnDataAdapter):
    """Base of the format adapters: format defaults + format-only options."""

    #: defaults that differ from the generic adapter's.
    defaults: ClassVar[dict[str, Any]] = {}
    #: format-only option -> help (merged into ``options``).
    own_options: ClassVar[dict[str, str]] = {}
    #: context column used when ``context_keys`` is not given and the column exists.
    auto_context: ClassVar[str | None] = None

    def load(self, path: str | Path | None = None, **options: Any) -> AdapterResult:
        """Read ``path`` with the format's defaults (see ``options``)."""
        opts = {**GENERIC_DEFAULTS, **self.defaults, **options}
        own = {k: opts.pop(k) for k in list(opts) if k in self.own_options}
        common = {k: opts.pop(k) for k in GENERIC_DEFAULTS}
        ctx_given = "context_keys" in options
        prepare = self._prepare(own, common, ctx_given)
        return self._load(path, opts, **common, prepare=prepare, extra={"format": self.name})

    def _prepare(self, own: dict[str, Any], common: dict[str, Any], ctx_given: bool) -> Prepare:
        def prepare(obs: pd.DataFrame, file: str, processing: list[str]) -> tuple[pd.DataFrame, dict[str, Any]]:
            overrides: dict[str, Any] = {}
            if not ctx_given and self.auto_context and self.auto_context in obs.columns:
                overrides["context_keys"] = [self.auto_context]
                processing.append(f"{self.name} format: context from obs[{self.auto_context!r}] (default)")
            obs, more = self._derive(obs, file, processing, own, common)
            overrides.update(more)
            return obs, overrides

        return prepare

    def _derive(self, obs: pd.DataFrame, file: str, processing: list[str], own: dict[str, Any],
                common: dict[str, Any]) -> tuple[pd.DataFrame, dict[str, Any]]:
        """Format hook: add a derived perturbation column; default: none."""
        return obs, {}


class PerturBenchAdapter(FormatAdapter):
    """PerturBench processed files (e.g. its ``devel.h5ad``)."""

    name: ClassVar[str] = "perturbench"
    description: ClassVar[str] = (
        "PerturBench .h5ad: obs 'condition' ('+' joins combos, control 'control'), context 'cell_type'; "
        "add covariates such as treatment or dose"
    )
    #: PerturBench's configs/data/devel.yaml: perturbation_key condition, delimiter '+',
    #: control value 'control', covariate_keys [cell_type].
    defaults: ClassVar[dict[str, Any]] = {
        "perturbation_key": "condition", "control": "control", "combo_delimiter": "+",
        "context_keys": ["cell_type"],
    }
    options: ClassVar[dict[str, str]] = {
        **AnnDataAdapter.options,
        "perturbation_key": "obs column of the perturbation (default 'condition', as PerturBench)",
        "context_keys": "context column(s) (default 'cell_type', PerturBench's covariate key)",
        "covariate_keys": "further group-defining covariates, e.g. treatment, dose, time (default none)",
    }


class GearsAdapter(FormatAdapter):
    """GEARS ``perturb_processed.h5ad`` files (``condition`` like ``A+ctrl``)."""

    name: ClassVar[str] = "gears"
    description: ClassVar[str] = (
        "GEARS perturb_processed.h5ad: obs 'condition' ('A+ctrl', 'A+B', 'ctrl'), context 'cell_type', "
        "gene symbols from var 'gene_name'"
    )
    defaults: ClassVar[dict[str, Any]] = {"perturbation_key": "condition", "control": "ctrl",
                                          "combo_delimiter": "+"}
    auto_context: ClassVar[str | None] = "cell_type"
    options: ClassVar[dict[str, str]] = {
        **AnnDataAdapter.options,
        "perturbation_key": "obs column of the GEARS condition (default 'condition')",
        "control": "GEARS control label (default 'ctrl'; dropped from 'A+ctrl')",
        "context_keys": "context column(s) (default 'cell_type' where present)",
        "gene_name_key": "var column of gene symbols (default 'gene_name' where present)",
    }

    def load(self, path: str | Path | None = None, **options: Any) -> AdapterResult:
        """As the base, but var 'gene_name' (if present) names the genes unless told otherwise."""
        if isinstance(path, ad.AnnData):
            if "gene_name_key" not in options and "gene_name" in path.var.columns:
                options = {**options, "gene_name_key": "gene_name"}
        elif "gene_name_key" not in options and path is not None and Path(path).is_file():
            import h5py

            try:
                with h5py.File(path, "r") as fh:
                    if "var" in fh and "gene_name" in fh["var"]:
                        options = {**options, "gene_name_key": "gene_name"}
            except OSError:
                pass  # the base adapter reports unreadable files
        return super().load(path, **options)


class ScPerturbAdapter(FormatAdapter):
    """scPerturb harmonised files (Peidli et al. 2024)."""

    name: ClassVar[str] = "scperturb"
    description: ClassVar[str] = (
        "scPerturb .h5ad: obs 'perturbation' (control 'control'), extra columns perturbation_2 ... "
        "joined into the gene set, context 'cell_line'; optional guide -> gene mapping"
    )
    defaults: ClassVar[dict[str, Any]] = {"perturbation_key": "perturbation", "control": "control",
                                          "combo_delimiter": "_"}
    auto_context: ClassVar[str | None] = "cell_line"
    own_options: ClassVar[dict[str, str]] = {
        "extra_perturbation_keys": "further perturbation columns joined into the gene set (default: every "
        "obs column named perturbation_<n>)",
        "guide_key": "obs column of guide labels: when given, the perturbation comes from the guides",
        "guide_delimiter": "separator of several guides in one cell's label (default '+')",
        "guide_pattern": "regex mapping a guide to its gene: named group 'gene' or group 1 "
        r"(e.g. '^(?P<gene>.+)g\d+$' for 'STAT1g2')",
        "guide_map": "guide -> gene table: a CSV/TSV file with columns guide,gene (no header needed) "
        "or a mapping; looked up before guide_pattern",
        "guide_control": "regex: guides that match are controls (e.g. '^NT' or 'non-targeting')",
    }
    options: ClassVar[dict[str, str]] = {
        **AnnDataAdapter.options,
        "combo_delimiter": "separator of combined targets in 'perturbation' (default '_', scPerturb's)",
        "context_keys": "context column(s) (default 'cell_line' where present)",
        **own_options,
    }

    def _derive(self, obs: pd.DataFrame, file: str, processing: list[str], own: dict[str, Any],
                common: dict[str, Any]) -> tuple[pd.DataFrame, dict[str, Any]]:
        control, delim = str(common["control"]), str(common["combo_delimiter"])
        if own.get("guide_key"):
            base = _genes_from_guides(obs, own, control, file, processing)
        else:
            key = str(common["perturbation_key"])
            if key not in obs.columns:
                return obs, {}  # the base adapter names the missing column
            base = [_split(v, delim, control) for v in obs[key].astype(object).to_numpy()]
        extra_keys = own.get("extra_perturbation_keys")
        extras = (as_str_list(extra_keys) if extra_keys is not None
                  else sorted((c for c in obs.columns if re.fullmatch(r"perturbation_\d+", str(c))),
                              key=lambda c: int(str(c).rsplit("_", 1)[1])))
        for col in extras:
            if col not in obs.columns:
                raise DatasetValidationError(f"obs has no column {col!r} (given in extra_perturbation_keys)",
                                             file=file, field=col, fix=f"use obs columns: {head(obs.columns, 30)}")
            for genes, v in zip(base, obs[col].astype(object).to_numpy()):
                genes.extend(_split(v, delim, control))
        if extras:
            processing.append(f"scperturb format: genes of obs {extras} added to each cell's gene set")
        labels = [_JOIN.join(g) if g else control for g in base]
        obs = obs.copy()
        obs["pfm_source_perturbation"] = pd.Categorical(labels)
        return obs, {"perturbation_key": "pfm_source_perturbation"}

    def load(self, path: str | Path | None = None, **options: Any) -> AdapterResult:
        """As the base; the derived column is parsed with an internal delimiter."""
        opts = {**GENERIC_DEFAULTS, **self.defaults, **options}
        own = {k: opts.pop(k) for k in list(opts) if k in self.own_options}
        common = {k: opts.pop(k) for k in GENERIC_DEFAULTS}
        parse = dict(common)
        prepare = self._prepare(own, parse, "context_keys" in options)
        source_opts = {"perturbation_key": common["perturbation_key"],
                       "combo_delimiter": common["combo_delimiter"]}
        common["combo_delimiter"] = _JOIN
        return self._load(path, opts, **common, prepare=prepare,
                          extra={"format": self.name, "source_columns": source_opts,
                                 "guide_mapping": {k: v for k, v in own.items() if k.startswith("guide")
                                                   and not isinstance(v, Mapping)} or None})


def _split(value: Any, delim: str, control: str) -> list[str]:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return []
    parts = split_combo(str(value), delim)
    return [p for p in parts if p and p != control and p.lower() not in ("nan", "none")]


def _load_guide_map(spec: Any, file: str) -> dict[str, str]:
    if spec is None:
        return {}
    if isinstance(spec, Mapping):
        return {str(k): str(v) for k, v in spec.items()}
    path = Path(str(spec)).expanduser()
    if not path.is_file():
        raise DatasetValidationError(f"guide_map file {path} does not exist", file=file, field="guide_map",
                                     fix="pass a CSV/TSV with columns guide,gene")
    text = path.read_text()
    dialect = "excel-tab" if "\t" in text.splitlines()[0] else "excel"
    rows = [r for r in csv.reader(text.splitlines(), dialect=dialect) if r and len(r) >= 2]
    if rows and [c.strip().lower() for c in rows[0][:2]] == ["guide", "gene"]:
        rows = rows[1:]
    return {r[0].strip(): r[1].strip() for r in rows}


def _genes_from_guides(obs: pd.DataFrame, own: dict[str, Any], control: str, file: str,
                       processing: list[str]) -> list[list[str]]:
    """Each cell's gene list from its guide label(s); controls give []."""
    key = str(own["guide_key"])
    if key not in obs.columns:
        raise DatasetValidationError(f"obs has no column {key!r} (given as guide_key)", file=file, field=key,
                                     fix=f"use one of the obs columns: {head(obs.columns, 30)}")
    table = _load_guide_map(own.get("guide_map"), file)
    try:
        pattern = re.compile(str(own["guide_pattern"])) if own.get("guide_pattern") else None
        ctrl_re = re.compile(str(own["guide_control"])) if own.get("guide_control") else None
    except re.error as exc:
        raise DatasetValidationError(f"invalid guide regex: {exc}", file=file, field="guide_pattern",
                                     fix="pass a valid Python regular expression") from exc
    if pattern is None and not table:
        raise DatasetValidationError("guide_key needs guide_pattern or guide_map", file=file, field="guide_key",
                                     fix=r"pass e.g. guide_pattern='^(?P<gene>.+)g\d+$' or guide_map=guides.csv")
    gdelim = str(own.get("guide_delimiter") or "+")
    cache: dict[str, str | None] = {}
    unmapped: set[str] = set()

    def gene_of(guide: str) -> str | None:
        if guide not in cache:
            if ctrl_re is not None and ctrl_re.search(guide):
                cache[guide] = None
            elif guide in table:
                cache[guide] = None if table[guide] in ("", control) else table[guide]
            elif pattern is not None and (m := pattern.search(guide)):
                cache[guide] = m.groupdict().get("gene") or (m.group(1) if m.groups() else m.group(0))
            else:
                unmapped.add(guide)
                cache[guide] = None
        return cache[guide]

    out = []
    for label in obs[key].astype(object).to_numpy():
        genes = [gene_of(g) for g in _split(label, gdelim, control)]
        out.append([g for g in genes if g])
    if unmapped:
        raise DatasetValidationError(
            f"{len(unmapped)} guide(s) map to no gene: {head(sorted(unmapped), 8)}", file=file, field=key,
            fix="extend guide_map / guide_pattern, or mark control guides with guide_control")
    n_ctrl = sum(1 for g in out if not g)
    processing.append(f"scperturb format: perturbation from guides in obs[{key!r}] "
                      f"({len(cache)} distinct guides; {n_ctrl} control cells)")
    return out


FORMAT_ADAPTERS: tuple[type[AnnDataAdapter], ...] = (PerturBenchAdapter, ScPerturbAdapter, GearsAdapter)
