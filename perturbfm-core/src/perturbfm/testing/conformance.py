"""Conformance suites for plugin authors.

Subclass the suite for your plugin kind in a pytest test module and set the
class attributes; pytest collects the inherited tests::

    from perturbfm.testing.conformance import ModelConformance
    from my_plugin.model import MyModel

    class TestMyModel(ModelConformance):
        model_class = MyModel

Suites: :class:`ModelConformance`, :class:`MetricPanelConformance`,
:class:`DatasetAdapterConformance` (override ``load_args``),
:class:`SplitGeneratorConformance` (set ``params``; override ``groups`` for
generators that need doses or times) and :class:`ExecutorConformance`. Each
checks the contract the harness relies on, including a full
``pfm-bench run``-equivalent pass through the store for models. Every
first-party implementation runs them (``tests/conformance/``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from perturbfm.dataset import REQUIRED_COLS, control_stats, group_table
from perturbfm.evaluation import build_eval_data, evaluate_panels
from perturbfm.interfaces import (
    ROLES,
    AdapterResult,
    DatasetAdapter,
    Executor,
    MetricPanel,
    MetricSpec,
    MetricValue,
    Model,
    NotApplicable,
    Prediction,
    SplitGenerator,
)
from perturbfm.testing.data import make_canonical_adata, training_and_queries

HELD_OUT = ["G0+G1@ctxA", "G4@ctxB"]


class ModelConformance:
    """Contract tests for a :class:`Model` plugin."""

    model_class: ClassVar[type[Model]]
    #: config overrides used by the tests (e.g. fewer epochs)
    config: ClassVar[dict[str, Any]] = {}

    def _fit(self, seed: int = 0) -> tuple[Model, list[Any], Prediction]:
        adata = make_canonical_adata(seed=seed)
        train, queries = training_and_queries(adata, HELD_OUT)
        model = self.model_class()
        cfg = {**model.default_config(), **self.config}
        model.fit(train, None, cfg)
        return model, queries, model.predict(queries)

    def test_has_name_and_description(self) -> None:
        assert isinstance(self.model_class.name, str) and self.model_class.name.strip()
        assert issubclass(self.model_class, Model)

    def test_default_config_is_json_serialisable(self) -> None:
        cfg = self.model_class().default_config()
        assert isinstance(cfg, dict)
        json.dumps(cfg)

    def test_predicts_finite_rows_for_each_query(self) -> None:
        _, queries, pred = self._fit()
        assert pred.group_ids == [q.group_id for q in queries]
        assert np.shape(pred.mean_delta) == (len(queries), 40)
        assert np.isfinite(pred.mean_delta).all()
        if pred.var_delta is not None:
            assert np.shape(pred.var_delta) == np.shape(pred.mean_delta)
            assert (np.asarray(pred.var_delta) >= 0).all()
        assert set(pred.notes) <= {q.group_id for q in queries}

    def test_is_deterministic_for_a_seed(self) -> None:
        _, _, a = self._fit()
        _, _, b = self._fit()
        np.testing.assert_allclose(a.mean_delta, b.mean_delta, rtol=1e-6, atol=1e-8)

    def test_variance_flag_matches_output(self) -> None:
        _, _, pred = self._fit()
        assert (pred.var_delta is not None) == bool(self.model_class.gives_variance)

    def test_runs_through_the_harness(self, tmp_path: Path) -> None:
        from perturbfm.datasets import create_split
        from perturbfm.plugins import PluginRegistry
        from perturbfm.run import execute_run
        from perturbfm.store import ArtifactStore
        from perturbfm.testing.doubles import TestDoublesPlugin, canonical_result

        store = ArtifactStore(tmp_path / "store")
        registry = PluginRegistry(extra_plugins=[("test-doubles", TestDoublesPlugin(self.model_class))])
        stored, _ = store.datasets.put(canonical_result(make_canonical_adata()), adapter="test", options={})
        sid, _, _ = create_split(store, stored.hash, "test-explicit", {"test": HELD_OUT}, 0, registry=registry)
        sets = [f"model.{k}={json.dumps(v)}" for k, v in self.config.items()] + ["run.panels=[test-mean-error]"]
        res = execute_run(store, model=self.model_class.name, split=sid, sets=sets, registry=registry)
        assert res.status == "succeeded", res.error
        assert (res.run_dir / "metrics.json").exists()
        assert (res.run_dir / "predictions.h5ad").exists()


class MetricPanelConformance:
    """Contract tests for a :class:`MetricPanel` plugin."""

    panel_class: ClassVar[type[MetricPanel]]

    def _data(self, noise: float) -> Any:
        adata = make_canonical_adata(seed=1)
        groups = group_table(adata)
        test = [groups[g] for g in HELD_OUT]
        ctrl = control_stats(adata)
        rng = np.random.default_rng(0)
        true = np.stack([np.asarray(adata[adata.obs["pfm_group"] == g.group_id].X.mean(0)).ravel()
                         - ctrl.mean(g.context) for g in test])
        pred = Prediction([g.group_id for g in test], true + noise * rng.standard_normal(true.shape),
                          var_delta=np.full(true.shape, 0.1))
        return build_eval_data(adata, test, ctrl, pred)

    def test_declares_metrics(self) -> None:
        assert self.panel_class.name and self.panel_class.metrics
        for key, spec in self.panel_class.metrics.items():
            assert isinstance(spec, MetricSpec) and spec.definition.strip(), key

    def test_every_key_is_finite_or_declared_not_applicable(self) -> None:
        for noise in (0.0, 0.5):
            values = self.panel_class().compute(self._data(noise))
            assert set(values) == set(self.panel_class.metrics)
            for key, v in values.items():
                assert isinstance(v, (MetricValue, NotApplicable)), key
                if isinstance(v, MetricValue):
                    assert not v.non_finite(), key

    def test_passes_the_completeness_check(self) -> None:
        out = evaluate_panels([self.panel_class()], self._data(0.3))
        assert set(out[self.panel_class.name]["metrics"]) == set(self.panel_class.metrics)

    def test_values_cover_every_group_and_are_json_serialisable(self) -> None:
        data = self._data(0.3)
        values = self.panel_class().compute(data)
        for key, v in values.items():
            if isinstance(v, NotApplicable):
                assert isinstance(v.reason, str) and v.reason.strip(), key
                continue
            assert v.per_group is not None or v.per_context is not None, f"{key}: no values"
            if v.per_group is not None:
                covered = set(v.per_group) | set(v.not_applicable_groups)
                assert covered == set(data.group_ids), f"{key}: groups {sorted(covered ^ set(data.group_ids))}"
                assert not set(v.per_group) & set(v.not_applicable_groups), key
            json.dumps({"extra": v.extra, "na": v.not_applicable_groups}, allow_nan=False)

    def test_is_deterministic(self) -> None:
        a = self.panel_class().compute(self._data(0.3))
        b = self.panel_class().compute(self._data(0.3))
        for key in a:
            va, vb = a[key], b[key]
            assert type(va) is type(vb), key
            if isinstance(va, MetricValue) and isinstance(vb, MetricValue):
                assert va.per_group == vb.per_group and va.per_context == vb.per_context, key


class DatasetAdapterConformance:
    """Contract tests for a :class:`DatasetAdapter` plugin. Override
    :meth:`load_args` to return ``(path, options)`` for a small valid input."""

    adapter_class: ClassVar[type[DatasetAdapter]]

    def load_args(self, tmp_path: Path) -> tuple[str | None, dict[str, Any]]:
        return None, {}

    def test_produces_canonical_dataset(self, tmp_path: Path) -> None:
        path, opts = self.load_args(tmp_path)
        res = self.adapter_class().load(path, **opts)
        assert isinstance(res, AdapterResult)
        for col in REQUIRED_COLS:
            assert col in res.adata.obs, col
        assert res.adata.obs["pfm_is_control"].any()
        assert res.expression_space

    def test_declares_name_and_options(self) -> None:
        assert isinstance(self.adapter_class.name, str) and self.adapter_class.name.strip()
        assert issubclass(self.adapter_class, DatasetAdapter)
        for key, help_text in self.adapter_class.options.items():
            assert isinstance(key, str) and isinstance(help_text, str) and help_text.strip(), key

    def test_output_is_well_formed(self, tmp_path: Path) -> None:
        path, opts = self.load_args(tmp_path)
        res = self.adapter_class().load(path, **opts)
        obs = res.adata.obs
        assert isinstance(res.synthetic, bool)
        assert res.adata.n_obs > 0 and res.adata.n_vars > 0
        assert res.adata.var_names.is_unique
        for col in REQUIRED_COLS:
            assert not obs[col].isna().any(), col
        x = res.adata.X
        values = np.asarray(x.data if hasattr(x, "data") and not isinstance(x, np.ndarray) else x, dtype=float)
        assert np.isfinite(values).all() and (values >= 0).all(), "X must be finite, non-negative log1p values"
        json.dumps(res.source, default=str)

    def test_missing_file_is_a_clean_error(self, tmp_path: Path) -> None:
        """An adapter reading a file names it when it does not exist."""
        from perturbfm.errors import PerturbFMError

        path, opts = self.load_args(tmp_path)
        if path is None:
            return  # a simulator: no file to miss
        missing = tmp_path / "no-such-dir" / "missing.h5ad"
        try:
            self.adapter_class().load(str(missing), **opts)
        except PerturbFMError as exc:
            assert "missing.h5ad" in exc.render(), exc.render()
        else:
            raise AssertionError(f"{self.adapter_class.name} loaded a file that does not exist")

    def test_stores_idempotently(self, tmp_path: Path) -> None:
        from perturbfm.store import ArtifactStore

        store = ArtifactStore(tmp_path / "store")
        path, opts = self.load_args(tmp_path)
        a, created_a = store.datasets.put(self.adapter_class().load(path, **opts), adapter="x", options={})
        b, created_b = store.datasets.put(self.adapter_class().load(path, **opts), adapter="x", options={})
        assert created_a and not created_b and a.hash == b.hash


class SplitGeneratorConformance:
    """Contract tests for a :class:`SplitGenerator` plugin."""

    generator_class: ClassVar[type[SplitGenerator]]
    params: ClassVar[dict[str, Any]] = {}

    def groups(self) -> dict[str, Any]:
        """The non-control groups the generator is given; override for generators that
        need more (doses, times ...)."""
        return {k: v for k, v in group_table(make_canonical_adata()).items() if not v.is_control}

    def _groups(self) -> dict[str, Any]:
        return self.groups()

    def test_declares_name_and_options(self) -> None:
        assert isinstance(self.generator_class.name, str) and self.generator_class.name.strip()
        assert issubclass(self.generator_class, SplitGenerator)
        for key, help_text in self.generator_class.options.items():
            assert isinstance(key, str) and isinstance(help_text, str) and help_text.strip(), key

    def test_assigns_every_group_a_known_role(self) -> None:
        groups = self._groups()
        out = self.generator_class().generate(groups, self.params, 0)
        assert set(out.assignments) == set(groups)
        assert set(out.assignments.values()) <= set(ROLES)
        assert "test" in out.assignments.values() and "train" in out.assignments.values()

    def test_is_deterministic(self) -> None:
        groups = self._groups()
        a = self.generator_class().generate(groups, self.params, 3)
        b = self.generator_class().generate(groups, self.params, 3)
        assert a.assignments == b.assignments and a.ood == b.ood and a.labels == b.labels

    def test_ood_and_labels_name_known_groups(self) -> None:
        groups = self._groups()
        out = self.generator_class().generate(groups, self.params, 0)
        assert set(out.ood or {}) <= set(groups) and set(out.labels or {}) <= set(groups)
        assert all(isinstance(v, bool) for v in (out.ood or {}).values())
        assert isinstance(out.notes, str)
        json.dumps({"assignments": out.assignments, "ood": out.ood, "labels": out.labels})

    def test_does_not_change_its_inputs(self) -> None:
        groups = self._groups()
        before, params = dict(groups), json.loads(json.dumps(self.params))
        self.generator_class().generate(groups, self.params, 0)
        assert groups == before and json.loads(json.dumps(self.params)) == params


def _square(x: int) -> int:
    return x * x


class ExecutorConformance:
    """Contract tests for an :class:`Executor` plugin: ``map`` returns every job's
    result, in order, for module-level (picklable) functions."""

    executor_class: ClassVar[type[Executor]]
    workers: ClassVar[int | None] = 2

    def test_declares_a_name(self) -> None:
        assert isinstance(self.executor_class.name, str) and self.executor_class.name.strip()
        assert issubclass(self.executor_class, Executor)

    def test_maps_in_order(self) -> None:
        jobs = [3, 1, 4, 1, 5, 9, 2, 6]
        assert self.executor_class(self.workers).map(_square, jobs) == [j * j for j in jobs]

    def test_maps_no_jobs(self) -> None:
        assert self.executor_class(self.workers).map(_square, []) == []
