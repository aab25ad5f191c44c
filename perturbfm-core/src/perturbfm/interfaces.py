"""Base classes for every plugin kind, and the values they exchange.

Plugin authors subclass one of :class:`DatasetAdapter`, :class:`SplitGenerator`,
:class:`Model`, :class:`MetricPanel` or :class:`Executor`, give it a unique
``name`` and return it from the matching ``pfm_register_*`` hook.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import numpy as np

if TYPE_CHECKING:
    import anndata as ad

    from perturbfm.dataset import GroupInfo
    from perturbfm.envs.spec import EnvSpec
    from perturbfm.evaldata import EvalData
    from perturbfm.training import TrainingData

ROLES = ("train", "val", "test", "calibration")
Role = Literal["train", "val", "test", "calibration"]


# --------------------------------------------------------------------------- datasets
@dataclass
class AdapterResult:
    """What a dataset adapter hands the core.

    Attributes:
        adata: AnnData with the canonical ``.obs`` columns (see
            :mod:`perturbfm.dataset`) and ``X`` log1p-normalised.
        source: where the data came from (path, simulator and seed ...).
        synthetic: True when the data were simulated; carried into every output.
        expression_space: e.g. ``"log1p_cp10k"`` or ``"log1p (as provided)"``.
        processing: human-readable list of what the adapter did (normalisation ...).
        licence / citation: as known for the source.
        extra: anything else worth keeping in the manifest (ground truth ...).
    """

    adata: ad.AnnData
    source: dict[str, Any]
    synthetic: bool
    expression_space: str
    processing: list[str] = field(default_factory=list)
    licence: str | None = None
    citation: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class DatasetAdapter(abc.ABC):
    """Turns a source into a canonical dataset.

    ``load`` receives keyword options (from the CLI's ``--opt key=value`` and the
    adapter's named flags) and must raise
    :class:`perturbfm.errors.DatasetValidationError` naming file, field and fix
    for malformed input.
    """

    name: ClassVar[str]
    description: ClassVar[str] = ""
    #: option name -> help text, shown by ``pfm-bench plugins``.
    options: ClassVar[Mapping[str, str]] = {}

    @abc.abstractmethod
    def load(self, path: str | None = None, **options: Any) -> AdapterResult:
        """Read the source and return the canonical dataset."""


# --------------------------------------------------------------------------- splits
@dataclass
class SplitAssignment:
    """A generator's output: every non-control group gets a role.

    Attributes:
        assignments: group id -> one of ``train``, ``val``, ``test``, ``calibration``.
        ood: optional group id -> True (out of distribution) / False, for the
            groups evaluated; used by ``ood_auroc``.
        labels: optional group id -> subgroup label (e.g. ``combo_seen1`` for a combination with one seen single).
        notes: free text kept in the split (what was held out and why).
    """

    assignments: dict[str, str]
    ood: dict[str, bool] | None = None
    labels: dict[str, str] | None = None
    notes: str = ""


class SplitGenerator(abc.ABC):
    """Assigns the groups of a dataset to roles. Must be deterministic for
    ``(dataset, params, seed)``; the core hashes and stores the result."""

    name: ClassVar[str]
    description: ClassVar[str] = ""
    options: ClassVar[Mapping[str, str]] = {}

    @abc.abstractmethod
    def generate(
        self, groups: Mapping[str, GroupInfo], params: Mapping[str, Any], seed: int
    ) -> SplitAssignment:
        """Assign ``groups`` (non-control groups of the dataset, by id)."""


# --------------------------------------------------------------------------- models
@dataclass
class Prediction:
    """A model's output for the queried groups.

    Attributes:
        group_ids: the queried group ids, in order.
        mean_delta: ``[n_groups, n_genes]`` predicted mean change vs the context's
            control mean, genes in the dataset's order.
        var_delta: optional ``[n_groups, n_genes]`` predictive variance of that change.
        notes: group id -> what the model did for that group when it could not do
            the normal thing (a gene without embedding, a missing single ...).
            Models must never fall back silently.
        info: model-level declarations written to the run (e.g. fallback policy).
        cells: optional group id -> predicted cells ``[n, n_genes]`` (absolute
            expression). Where absent, the harness builds cells as the context's
            control cells + predicted delta and says so.
    """

    group_ids: list[str]
    mean_delta: np.ndarray
    var_delta: np.ndarray | None = None
    notes: dict[str, str] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)
    cells: dict[str, np.ndarray] | None = None


class Model(abc.ABC):
    """A perturbation-response model.

    The harness calls ``default_config()``, merges the user's values, then
    ``fit(train, val, config)`` and ``predict(queries)``.
    """

    name: ClassVar[str]
    description: ClassVar[str] = ""
    #: True when ``predict`` returns ``var_delta``.
    gives_variance: ClassVar[bool] = False
    #: The model's own Python environment (:class:`perturbfm.envs.EnvSpec`); None: the
    #: model runs in the harness's process. A model that sets it subclasses
    #: :class:`perturbfm.envs.IsolatedModel`, whose fit/predict run in a subprocess of
    #: that environment (see docs/environments.md).
    environment: ClassVar[EnvSpec | None] = None

    def default_config(self) -> dict[str, Any]:
        """Every parameter the model reads, with its default."""
        return {}

    @abc.abstractmethod
    def fit(self, train: TrainingData, val: TrainingData | None, config: Mapping[str, Any]) -> None:
        """Learn from the training groups (and all control cells)."""

    @abc.abstractmethod
    def predict(self, queries: list[GroupInfo]) -> Prediction:
        """Predict the held-out groups ``queries`` (their cells are not given)."""

    def diagnostics(self) -> dict[str, Any]:
        """Optional JSON-serialisable diagnostics written with the run."""
        return {}

    @classmethod
    def report_sections(cls, diagnostics: Mapping[str, Any]) -> list[ReportSection]:
        """Model-specific sections of the run report, built from what :meth:`diagnostics`
        returned (as stored in ``metrics.json``, so a report can be rebuilt from the run
        directory alone). Default: none."""
        return []

    def describe(self) -> dict[str, Any]:
        """A JSON-serialisable model spec (architecture summary) for provenance;
        called after ``fit``. Override to add layer sizes, graph sources ..."""
        return {"class": f"{type(self).__module__}.{type(self).__qualname__}", "description": self.description}


@dataclass
class ReportSection:
    """A model-specific section of a run's ``report.html`` (see :meth:`Model.report_sections`).

    Attributes:
        title: the section heading.
        text: a paragraph under the heading (plain text, escaped by the report).
        headers / rows: an optional table (cells: str, int or float; floats shown to 4 digits).
        heatmap: when True the report also draws the numeric cells of the table (all
            columns but the first) as a heatmap with the first column as row labels.
    """

    title: str
    text: str = ""
    headers: list[str] = field(default_factory=list)
    rows: list[list[Any]] = field(default_factory=list)
    heatmap: bool = False


# --------------------------------------------------------------------------- metrics
@dataclass(frozen=True)
class MetricSpec:
    """The pinned definition of one metric key.

    Attributes:
        definition: the formula, in words.
        variant: which convention among the peers' (e.g. "r, not 1 - r").
        higher_is_better: direction, or None where it has none.
        delta_based: True when the metric is computed from the predicted and true
            deltas against the context's control mean (then the harness also reports
            it with prediction and truth referenced to disjoint control halves,
            ``indep_ctrl``, so shared-control inflation is visible).
    """

    definition: str
    variant: str = ""
    higher_is_better: bool | None = None
    delta_based: bool = False


@dataclass(frozen=True)
class NotApplicable:
    """A declared reason why a metric does not apply to this run."""

    reason: str


@dataclass
class MetricValue:
    """A metric's values.

    Give ``per_group`` (group id -> value) for group-level metrics; the core
    aggregates to per-context means and the global mean weighted by true cell
    counts. Give ``per_context`` only for metrics defined over a whole context
    (then the global value weights contexts by their true cells). ``extra``
    holds JSON-serialisable detail (curves, counts) kept beside the values.

    A group the metric cannot score for a stated reason (no true DE genes, a
    solver that did not converge ...) goes in ``not_applicable_groups`` (group id
    -> reason) instead of ``per_group``: it is listed, counted and left out of
    every aggregate, never scored as 0 or NaN. ``per_group`` and
    ``not_applicable_groups`` together cover every evaluated group.
    """

    per_group: dict[str, float] | None = None
    per_context: dict[str, float] | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    not_applicable_groups: dict[str, str] = field(default_factory=dict)

    def non_finite(self) -> list[str]:
        """Names of entries that are not finite numbers."""
        bad = []
        for level in (self.per_group, self.per_context):
            for k, v in (level or {}).items():
                if v is None or not math.isfinite(float(v)):
                    bad.append(k)
        return bad


class MetricPanel(abc.ABC):
    """A named set of metric keys. ``compute`` must return a value or a
    :class:`NotApplicable` for every key in ``metrics``.

    ``standard`` panels are computed by default (when ``run.panels`` is not given);
    ``needs_variance`` panels only when the model gives a predictive variance.
    """

    name: ClassVar[str]
    version: ClassVar[str] = "1"
    description: ClassVar[str] = ""
    standard: ClassVar[bool] = False
    needs_variance: ClassVar[bool] = False
    metrics: ClassVar[Mapping[str, MetricSpec]] = {}

    @abc.abstractmethod
    def compute(self, data: EvalData) -> dict[str, MetricValue | NotApplicable]:
        """Compute every key of the panel."""


# --------------------------------------------------------------------------- executors
class Executor(abc.ABC):
    """Runs a list of independent jobs (e.g. the runs of a study)."""

    name: ClassVar[str]
    description: ClassVar[str] = ""

    def __init__(self, workers: int | None = None) -> None:
        #: parallel workers; None lets the executor choose
        self.workers = workers

    @abc.abstractmethod
    def map(self, fn: Callable[[Any], Any], jobs: Iterable[Any]) -> list[Any]:
        """Apply ``fn`` to every job and return results in order."""


PLUGIN_KINDS: dict[str, tuple[str, type]] = {
    "dataset_adapter": ("pfm_register_dataset_adapters", DatasetAdapter),
    "split_generator": ("pfm_register_split_generators", SplitGenerator),
    "model": ("pfm_register_models", Model),
    "metric_panel": ("pfm_register_metric_panels", MetricPanel),
    "executor": ("pfm_register_executors", Executor),
}
