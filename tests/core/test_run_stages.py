"""The run pipeline as stages: training mean in the core, core-owned calibration,
bounded control samples, the run writer, observers and time limits, and the
shape of the code (no cycles, module sizes, no first-party plugin names)."""

from __future__ import annotations

import ast
import errno
import re
import signal
import time
import tracemalloc
from dataclasses import replace
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from perturbfm.dataset import control_stats, dense_rows, group_table
from perturbfm.errors import ConfigError, PluginError, PredictionError
from perturbfm.evaluation import build_eval_data
from perturbfm.interfaces import Model, Prediction, ReportSection
from perturbfm.testing import make_canonical_adata
from perturbfm.training import TrainingData

CORE = Path(__file__).resolve().parents[2] / "perturbfm-core" / "src" / "perturbfm"


@pytest.fixture(scope="module")
def adata() -> ad.AnnData:
    return make_canonical_adata(n_genes=40, cells_per_group=12, n_control=30, seed=5)


def _split(adata: ad.AnnData):
    groups = [g for g in group_table(adata).values() if not g.is_control]
    ctrl = control_stats(adata)
    return groups, ctrl


# --------------------------------------------------------------------------- training mean
def test_training_mean_equals_the_train_mean_model(adata: ad.AnnData) -> None:
    from perturbfm_models.baselines import TrainMeanModel

    groups, ctrl = _split(adata)
    train_groups = [g for g in groups if g.context == groups[0].context][:-2] + \
        [g for g in groups if g.context != groups[0].context][:2]
    test = [replace(g, n_cells=0) for g in groups if g not in train_groups]
    train = TrainingData(adata, train_groups, ctrl)
    model = TrainMeanModel()
    model.fit(train, None, model.default_config())
    want = model.predict(test)
    got, notes = train.training_mean(test)
    np.testing.assert_array_equal(got, want.mean_delta)  # identical, not approximately
    assert notes == want.notes


def test_training_mean_falls_back_to_all_groups_with_a_note(adata: ad.AnnData) -> None:
    groups, ctrl = _split(adata)
    ctx0 = groups[0].context
    train = TrainingData(adata, [g for g in groups if g.context == ctx0], ctrl)
    other = [replace(g, n_cells=0) for g in groups if g.context != ctx0]
    got, notes = train.training_mean(other)
    np.testing.assert_allclose(got, np.broadcast_to(train.deltas().mean(axis=0), got.shape))
    assert set(notes) == {g.group_id for g in other} and all("no training groups" in n for n in notes.values())
    empty, notes0 = TrainingData(adata, [], ctrl).training_mean(other[:1])
    assert not empty.any() and "zero delta" in notes0[other[0].group_id]


# --------------------------------------------------------------------------- calibration
def test_calibration_is_computed_once_and_the_panel_reads_it(adata: ad.AnnData, monkeypatch) -> None:
    from perturbfm import calibration_metrics as cm
    from perturbfm.builtin.uncertainty_panel import UncertaintyPanel
    from perturbfm.references import baseline_data

    groups, ctrl = _split(adata)
    rng = np.random.default_rng(0)
    n, g = len(groups), adata.n_vars
    pred = Prediction([x.group_id for x in groups], rng.normal(size=(n, g)), var_delta=np.full((n, g), 0.3))
    data = build_eval_data(adata, groups, ctrl, pred)
    result, doc = cm.calibrate(data, None, {"ensemble": 1, "ensemble_mode": "seeds", "conformal_mondrian": False})
    data.calibration = result
    calls = []
    monkeypatch.setattr("perturbfm.builtin.uncertainty_panel.uncertainty_values",
                        lambda *a, **k: calls.append(1) or cm.uncertainty_values(*a, **k))
    got = UncertaintyPanel().compute(data)
    assert calls == [] and got.keys() == result.values.keys()
    assert got["nll"].per_group == result.values["nll"].per_group
    # a derived input (the baseline) never picks up the model's result
    base = UncertaintyPanel().compute(baseline_data(data))
    assert calls == [1] and all(v.reason == cm.NO_UNCERTAINTY for v in base.values())
    assert doc["gaussian"]["coverage"].keys() == {"50", "80", "90", "95"}
    assert doc["conformal"] == {"not_applicable": "conformal intervals were not requested (run.conformal=false)"}


def test_uncertainty_panel_is_registered_by_the_core() -> None:
    from perturbfm.plugins import PluginRegistry

    reg = PluginRegistry().get("metric_panel", "uncertainty")
    assert reg.cls.__module__ == "perturbfm.builtin.uncertainty_panel"
    from perturbfm_metrics.uncertainty import UncertaintyPanel  # re-exported for old imports

    assert UncertaintyPanel is reg.cls


# --------------------------------------------------------------------------- bounded controls
def _big_controls(n_ctrl: int, n_genes: int) -> ad.AnnData:
    """``n_ctrl`` control cells and one perturbed group of 5 cells, one context, sparse X."""
    n = n_ctrl + 5
    rng = np.random.default_rng(1)
    X = sp.csr_matrix((rng.uniform(0.5, 3.0, n).astype(np.float32), (np.arange(n), rng.integers(0, n_genes, n))),
                      shape=(n, n_genes))
    obs = pd.DataFrame({
        "pfm_perturbation": ["control"] * n_ctrl + ["G1"] * 5,
        "pfm_is_control": [True] * n_ctrl + [False] * 5,
        "pfm_context": ["c"] * n,
        "pfm_covariates": [""] * n,
    }, index=[f"cell{i}" for i in range(n)])
    obs["pfm_group"] = np.where(obs["pfm_is_control"], "control", "G1|c|")
    return ad.AnnData(X=X, obs=obs, var=pd.DataFrame(index=[f"g{i}" for i in range(n_genes)]))


def test_controls_are_a_bounded_deterministic_sample_never_densified_whole() -> None:
    n_genes = 1_000  # 60,000 x 8,000 behaves the same; fewer genes keep the control statistics fast
    adata = _big_controls(60_000, n_genes)
    groups = [g for g in group_table(adata).values() if not g.is_control]
    ctrl = control_stats(adata)
    pred = Prediction([g.group_id for g in groups], np.zeros((len(groups), adata.n_vars)))
    data = build_eval_data(adata, groups, ctrl, pred, max_cells=500, seed=3)
    tracemalloc.start()
    cells = data.control_cells("c")
    pcells = data.pred_cells(0)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert cells.shape == (500, n_genes) and pcells.shape == (500, n_genes)
    sample = 500 * n_genes * 8
    assert peak < 4 * sample, f"peak {peak / 2**20:.1f} MiB; all controls dense would be {60_000 * n_genes * 8 / 2**20:.0f} MiB"
    assert data.n_control_cells("c") == 60_000
    again = build_eval_data(adata, groups, ctrl, pred, max_cells=500, seed=3)
    np.testing.assert_array_equal(again.control_cells("c"), cells)
    other = build_eval_data(adata, groups, ctrl, pred, max_cells=500, seed=4)
    assert not np.array_equal(other.control_cells("c"), cells) or cells.sum() == 0


def test_few_controls_are_all_returned_and_pred_cells_unchanged(adata: ad.AnnData) -> None:
    groups, ctrl = _split(adata)
    pred = Prediction([g.group_id for g in groups], np.ones((len(groups), adata.n_vars)))
    data = build_eval_data(adata, groups, ctrl, pred)
    ctx = groups[0].context
    mask = adata.obs["pfm_is_control"].to_numpy(bool) & (adata.obs["pfm_context"].astype(str) == ctx).to_numpy()
    np.testing.assert_array_equal(data.control_cells(ctx), dense_rows(adata, mask))
    np.testing.assert_array_equal(data.pred_cells(0), dense_rows(adata, mask) + 1.0)


@pytest.mark.parametrize("max_cells,seed,field", [(0, 0, "max_cells"), (-1, 0, "max_cells"), (10, -1, "seed"),
                                                  (2.5, 0, "max_cells")])
def test_bad_sampling_options_are_config_errors(adata: ad.AnnData, max_cells, seed, field) -> None:
    groups, ctrl = _split(adata)
    pred = Prediction([g.group_id for g in groups], np.zeros((len(groups), adata.n_vars)))
    with pytest.raises(ConfigError) as err:
        build_eval_data(adata, groups, ctrl, pred, max_cells=max_cells, seed=seed)
    assert err.value.field == field and err.value.fix


# --------------------------------------------------------------------------- writer
def test_run_dirs_are_created_exclusively(tmp_path: Path) -> None:
    from perturbfm.run.writer import create_run_dir

    made = [create_run_dir(tmp_path / "runs", "20260101-000000_abc_m_def") for _ in range(4)]
    assert [p.name for p in made] == ["20260101-000000_abc_m_def"] + [f"20260101-000000_abc_m_def_{k}"
                                                                       for k in (2, 3, 4)]


def test_run_dir_creation_races(tmp_path: Path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    from perturbfm.run.writer import create_run_dir

    with ThreadPoolExecutor(8) as pool:
        made = list(pool.map(lambda _: create_run_dir(tmp_path / "runs", "same"), range(16)))
    assert len(set(made)) == 16


@pytest.mark.parametrize("code,needle", [(errno.ENOSPC, "free space"), (errno.EROFS, "writable"),
                                         (errno.EACCES, "chmod"), (errno.EFBIG, "ulimit -f"),
                                         (errno.EIO, "healthy disk")])
def test_write_errors_name_the_path_and_a_fix(tmp_path: Path, monkeypatch, code: int, needle: str) -> None:
    from perturbfm.run import writer as W

    d = tmp_path / "run"
    d.mkdir()
    w = W.RunWriter(d, "run")

    def boom(*_a, **_k):
        raise OSError(code, "simulated")

    monkeypatch.setattr(W, "atomic_write_json", boom)
    with pytest.raises(W.RunWriteError) as err:
        w.json("metrics.json", {"a": 1})
    assert err.value.file == str(d / "metrics.json") and needle in err.value.fix


def test_status_falls_back_to_stderr(tmp_path: Path, monkeypatch, capsys) -> None:
    from perturbfm.run import writer as W

    d = tmp_path / "run"
    d.mkdir()
    w = W.RunWriter(d, "run")
    monkeypatch.setattr(W, "atomic_write_json", lambda *a, **k: (_ for _ in ()).throw(OSError(errno.ENOSPC, "full")))
    w.finish("failed", error="x")
    assert not w.status_ok and '"status": "failed"' in capsys.readouterr().err


def test_space_check_refuses_a_write_the_disk_cannot_take(tmp_path: Path, monkeypatch) -> None:
    from collections import namedtuple

    from perturbfm.run import writer as W

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(W.shutil, "disk_usage", lambda _p: usage(10, 10, 1000))
    with pytest.raises(W.RunWriteError, match="not enough free space") as err:
        W.check_space(tmp_path / "predictions.h5ad", 10**6, "the predictions")
    assert "df -h" in err.value.fix


def test_documents_are_written_once(tmp_path: Path) -> None:
    from perturbfm.run.writer import RunWriter

    w = RunWriter(tmp_path, "r")
    w.json("calibration.json", {})
    with pytest.raises(RuntimeError, match="written twice"):
        w.json("calibration.json", {})


def test_failed_status_withdraws_metrics(tmp_path: Path) -> None:
    from perturbfm.run.writer import RunWriter

    w = RunWriter(tmp_path, "r")
    w.json("metrics.json", {"x": 1})
    w.finish("failed", error="later stage")
    assert not (tmp_path / "metrics.json").exists() and "metrics_withdrawn" in w.status


# --------------------------------------------------------------------------- guards
class _Impl:
    def __init__(self, name, fn):
        self.plugin_name, self.function = name, fn


class _Caller:
    def __init__(self, impls):
        self._impls = impls

    def get_hookimpls(self):
        return self._impls


@pytest.mark.parametrize("exc", [SystemExit(0), KeyboardInterrupt(), RuntimeError("x"), BaseException("raw"),
                                 GeneratorExit()])
def test_observers_never_stop_the_caller(exc: BaseException) -> None:
    from types import SimpleNamespace

    from perturbfm.run.guards import call_observers

    seen, errors = [], []

    def bad(**_k):
        raise exc

    reg = SimpleNamespace(pm=SimpleNamespace(hook=SimpleNamespace(pfm_run_started=_Caller(
        [_Impl("bad", bad), _Impl("good", lambda **k: seen.append(k))]))))
    call_observers(reg, "pfm_run_started", errors.append, run_dir="d", run_info={})
    assert seen == [{"run_dir": "d", "run_info": {}}]
    assert len(errors) == 1 and errors[0].startswith(f"bad.pfm_run_started: {type(exc).__name__}")


def test_deadline_interrupts_code_that_swallows_exceptions() -> None:
    from perturbfm.run.guards import Deadline, RunTimeoutError

    before = signal.getsignal(signal.SIGALRM)
    t0 = time.monotonic()
    with pytest.raises(RunTimeoutError, match="timed out") as err:
        with Deadline(0.3).guard("fitting model 'x'"):
            while True:
                try:
                    time.sleep(0.02)
                except Exception:  # noqa: BLE001 - what a careless model does
                    pass
    assert time.monotonic() - t0 < 5 and err.value.field == "run.timeout_s"
    assert signal.getsignal(signal.SIGALRM) == before  # the previous handler is restored
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)
    with Deadline(None).guard("no limit"):
        pass
    with Deadline(5).guard("in time"):
        pass


@pytest.mark.parametrize("value", [0, -1, float("inf"), "10", True])
def test_bad_timeouts_are_config_errors(value) -> None:
    from perturbfm.run.guards import check_timeout

    with pytest.raises(ConfigError) as err:
        check_timeout(value)
    assert err.value.field == "run.timeout_s"


def test_plain_json_converts_numpy_and_refuses_the_rest() -> None:
    from perturbfm.run.guards import plain_json

    got = plain_json({"a": np.float32(0.5), np.int64(3): np.arange(3), "n": {"b": np.bool_(True)}}, "diag", "m")
    assert got == {"a": 0.5, "3": [0, 1, 2], "n": {"b": True}}
    for bad, where in (({"x": object()}, "diag.x"), ({"y": [1.0, float("nan")]}, "diag.y[1]"),
                       ({"z": np.array(["s"])}, "diag.z")):
        with pytest.raises(PluginError) as err:
            plain_json(bad, "diag", "model 'm'")
        assert err.value.field == where and "model 'm'" in err.value.message


@pytest.mark.parametrize("pred,field", [([1, 2], "predict"), (None, "predict"),
                                        (Prediction(["a"], "xyz"), "mean_delta"),
                                        (Prediction(["a"], np.zeros(3)), "mean_delta"),
                                        (Prediction([1], np.zeros((1, 3))), "group_ids"),
                                        (Prediction(["a"], np.zeros((1, 3)), notes={"a": 1}), "notes"),
                                        (Prediction(["a"], np.zeros((1, 3)), info=[1]), "info")])
def test_malformed_predictions_name_the_model_and_field(pred, field) -> None:
    from perturbfm.run.guards import check_prediction

    with pytest.raises(PredictionError) as err:
        check_prediction(pred, "junk")
    assert err.value.field == field and "'junk'" in err.value.message


# --------------------------------------------------------------------------- report sections
def test_model_report_sections_are_rendered_generically() -> None:
    from perturbfm.report import render_sections

    class M(Model):
        name = "m"

        def fit(self, train, val, config):
            pass

        def predict(self, queries):
            raise NotImplementedError

        @classmethod
        def report_sections(cls, diagnostics):
            return [ReportSection("Trust <gates>", "a & b", ["ctx", "g1"], [["c0", 0.5], ["c1", 0.25]], heatmap=True)]

    assert Model.report_sections({}) == []
    html = render_sections(M.report_sections({}))
    assert "Trust &lt;gates&gt;" in html and "a &amp; b" in html and "<img" in html and "0.25" in html
    broken = render_sections([ReportSection("Broken", rows=[["x", 1.0]], headers=["a"], heatmap=True),
                              object()])
    assert "Broken" in broken


def test_cgio_gates_come_from_the_model() -> None:
    from perturbfm_models.cgio.wrapper import CGIOModel

    secs = CGIOModel.report_sections({"gates": {"c0": {"go": 0.8, "coexpr": 0.3}}})
    assert secs[0].title == "Graph reliance (CGIO gates)" and secs[0].rows == [["c0", 0.3, 0.8]]
    assert CGIOModel.report_sections({}) == []


# --------------------------------------------------------------------------- code shape
MINE = ["run", "evaluation.py", "evaldata.py", "interfaces.py", "references.py", "calibration.py",
        "calibration_metrics.py", "report.py", "training.py", "compare.py", "builtin/uncertainty_panel.py"]


def _files() -> list[Path]:
    out = []
    for name in MINE:
        p = CORE / name
        out += sorted(p.glob("*.py")) if p.is_dir() else [p]
    return out


def _module(path: Path) -> str:
    rel = path.relative_to(CORE.parent).with_suffix("")
    parts = list(rel.parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_module(name: str) -> bool:
    rel = Path(*name.split(".")[1:])
    return (CORE / rel).with_suffix(".py").is_file() or (CORE / rel / "__init__.py").is_file()


def _top_imports(path: Path) -> set[str]:
    """Modules imported at module level (not under TYPE_CHECKING, not inside functions)."""
    tree = ast.parse(path.read_text())
    out: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("perturbfm"):
            subs = {f"{node.module}.{a.name}" for a in node.names}
            known = {s for s in subs if _is_module(s)}
            out |= known if known == subs else known | {node.module}
        elif isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("perturbfm")}
    return out


def test_no_import_cycles_among_the_pipeline_modules() -> None:
    files = {_module(p): p for p in CORE.rglob("*.py")}
    graph = {m: {i for i in _top_imports(p) if i in files and i != m} for m, p in files.items()}
    mine = {_module(p) for p in _files()}

    def reaches(start: str, goal: str) -> bool:
        seen, stack = set(), list(graph.get(start, ()))
        while stack:
            m = stack.pop()
            if m == goal:
                return True
            if m not in seen:
                seen.add(m)
                stack += graph.get(m, ())
        return False

    cyc = sorted(m for m in mine if reaches(m, m))
    assert cyc == [], cyc
    assert not reaches("perturbfm.interfaces", "perturbfm.evaluation")


def test_modules_are_short_or_say_why() -> None:
    long = [p for p in _files() if len(p.read_text().splitlines()) > 400
            and "over 400 lines" not in p.read_text()[:3000].lower()]
    assert long == [], long


def test_the_core_pipeline_names_no_first_party_plugin() -> None:
    pat = re.compile(r"train-mean|cgio|random-groups|gears|\"linear\"", re.IGNORECASE)
    hits = [f"{p.name}:{i + 1}: {line.strip()}" for p in _files()
            for i, line in enumerate(p.read_text().splitlines()) if pat.search(line)]
    assert hits == [], hits


# --------------------------------------------------------------------------- panels returning junk
def _junk_panel(result):
    from perturbfm.interfaces import MetricPanel, MetricSpec

    class Junk(MetricPanel):
        name = "junk"
        metrics = {"score": MetricSpec(definition="x")}

        def compute(self, data):
            if isinstance(result, BaseException):
                raise result
            return result(data) if callable(result) else result

    return Junk()


def _per_group(value):
    from perturbfm.interfaces import MetricValue

    return lambda data: {"score": MetricValue(per_group={g: value for g in data.group_ids})}


@pytest.mark.parametrize("result,needle", [
    ([1, 2], "list"), ("score", "str"), (None, "NoneType"), (SystemExit(0), "SystemExit"),
    ({"score": "0.5"}, "str"), ({"score": 3}, "int"),
    (_per_group("abc"), "per_group"), (_per_group(None), "per_group"), (_per_group(float("nan")), "non-finite"),
    (_per_group(np.array([1.0, 2.0])), "per_group"),
    (lambda d: {"score": __import__("perturbfm.interfaces").interfaces.MetricValue(
        per_group={g: 1.0 for g in d.group_ids}, extra={"o": object()})}, "extra"),
    (lambda d: {"score": __import__("perturbfm.interfaces").interfaces.MetricValue(
        per_group={g: 1.0 for g in d.group_ids}, not_applicable_groups=[1])}, "not_applicable_groups"),
    ({"score": __import__("perturbfm.interfaces").interfaces.NotApplicable(None)}, "reason"),
])
def test_panels_returning_junk_are_named_problems(adata: ad.AnnData, result, needle: str) -> None:
    from perturbfm.errors import PanelIncompleteError
    from perturbfm.evaluation import evaluate_panels

    groups, ctrl = _split(adata)
    data = build_eval_data(adata, groups, ctrl, Prediction([g.group_id for g in groups],
                                                           np.zeros((len(groups), adata.n_vars))))
    with pytest.raises(PanelIncompleteError) as err:
        evaluate_panels([_junk_panel(result)], data)
    assert err.value.problems[0][0] == "junk" and needle in err.value.problems[0][2], err.value.problems


def test_numpy_values_in_panels_are_converted(adata: ad.AnnData) -> None:
    import json

    from perturbfm.evaluation import evaluate_panels
    from perturbfm.interfaces import MetricValue

    groups, ctrl = _split(adata)
    data = build_eval_data(adata, groups, ctrl, Prediction([g.group_id for g in groups],
                                                           np.zeros((len(groups), adata.n_vars))))
    out = evaluate_panels([_junk_panel(lambda d: {"score": MetricValue(
        per_group={g: np.float32(0.5) for g in d.group_ids}, extra={"curve": np.arange(2.0), "n": np.int64(2)})})],
        data)
    entry = out["junk"]["metrics"]["score"]
    assert entry["global"] == 0.5 and entry["extra"] == {"curve": [0.0, 1.0], "n": 2}
    json.dumps(out, allow_nan=False)


# --------------------------------------------------------------------------- whole runs, in process
@pytest.fixture(scope="module")
def run_env(tmp_path_factory: pytest.TempPathFactory) -> dict:
    import contextlib
    import io

    from perturbfm.cli import main

    store = tmp_path_factory.mktemp("run-stages-store")
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["--store", str(store), "data", "import", "--adapter", "synthetic", "--opt", "n_genes=24",
                     "--opt", "n_singles=6", "--opt", "n_doubles=2", "--opt", "cells_per_group=10",
                     "--opt", "n_control=40"]) == 0
    ds = out.getvalue().strip().splitlines()[-1].strip()
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["--store", str(store), "splits", "create", "--dataset", ds, "--generator", "random-groups",
                     "--test-fraction", "0.4"]) == 0
    return {"store": store, "split": out.getvalue().strip().splitlines()[-1].strip()}


def _registry(behaviour: str):
    from types import SimpleNamespace

    from perturbfm import hookimpl
    from perturbfm.plugins import PluginRegistry

    class Slow(Model):
        name = "slow-model"

        def fit(self, train, val, config):
            self.g = len(train.genes)
            if behaviour == "hang":
                time.sleep(60)

        def predict(self, queries):
            return Prediction([q.group_id for q in queries], np.zeros((len(queries), self.g)))

        def diagnostics(self):
            return {"loss": np.float64(0.5)} if behaviour == "numpy" else {}

    @hookimpl
    def pfm_register_models():
        return [Slow]

    @hookimpl
    def pfm_run_started(run_dir, run_info):
        if behaviour == "observer_exit":
            raise SystemExit(0)

    return PluginRegistry(extra_plugins=[("test-slow", SimpleNamespace(pfm_register_models=pfm_register_models,
                                                                        pfm_run_started=pfm_run_started))])


def _store(run_env: dict):
    from perturbfm.store import ArtifactStore

    return ArtifactStore(run_env["store"])


def test_a_run_writes_every_document_once_in_order(run_env: dict) -> None:
    import json

    from perturbfm.run import execute_run

    res = execute_run(_store(run_env), model="slow-model", split=run_env["split"], sets=["run.panels=[basic]"],
                      registry=_registry("numpy"))
    assert res.status == "succeeded", res.error
    status = json.loads((res.run_dir / "run_status.json").read_text())
    assert list(status["stages"]) == ["setup", "load", "fit", "predict", "calibration", "evaluate", "predictions",
                                      "documents", "report"]
    for name in ("config.resolved.yaml", "parameters.csv", "predictions.h5ad", "calibration.json",
                 "provenance.json", "metrics.json", "report.html"):
        assert (res.run_dir / name).is_file(), name
    prov = json.loads((res.run_dir / "provenance.json").read_text())
    assert "spec" in prov["model"]  # one write, with the fitted model's spec
    assert res.metrics["model_diagnostics"] == {"loss": 0.5}


def test_a_hanging_model_times_out_in_process(run_env: dict) -> None:
    import json

    from perturbfm.run import execute_run

    t0 = time.monotonic()
    res = execute_run(_store(run_env), model="slow-model", split=run_env["split"],
                      sets=["run.panels=[basic]", "run.timeout_s=1"], registry=_registry("hang"))
    assert res.status == "failed" and time.monotonic() - t0 < 30
    status = json.loads((res.run_dir / "run_status.json").read_text())
    assert status["timed_out"] is True and "timed out" in status["error"] and status["failed_stage"] == "fit"
    assert (res.run_dir / "provenance.json").is_file() and not (res.run_dir / "metrics.json").exists()


def test_an_observer_exit_is_recorded_and_the_run_succeeds(run_env: dict) -> None:
    from perturbfm.run import execute_run

    res = execute_run(_store(run_env), model="slow-model", split=run_env["split"], sets=["run.panels=[basic]"],
                      registry=_registry("observer_exit"))
    assert res.status == "succeeded"
    import json

    status = json.loads((res.run_dir / "run_status.json").read_text())
    assert len(status["observer_errors"]) == 1
    err = status["observer_errors"][0]
    assert err.startswith("test-slow") and ".pfm_run_started: " in err and "SystemExit" in err and "exit(0)" in err


@pytest.mark.parametrize("target", ["config.resolved.yaml", "calibration.json", "metrics.json", "predictions.h5ad"])
def test_a_write_failure_fails_the_run_cleanly(run_env: dict, monkeypatch, target: str) -> None:
    import json

    from perturbfm.run import execute_run
    from perturbfm.run import writer as W

    real = W.RunWriter._write

    def failing(self, name, fn, what):
        if name == target:
            raise W.write_error(OSError(errno.ENOSPC, "No space left on device"), self.dir / name, what)
        return real(self, name, fn, what)

    monkeypatch.setattr(W.RunWriter, "_write", failing)
    res = execute_run(_store(run_env), model="slow-model", split=run_env["split"], sets=["run.panels=[basic]"],
                      registry=_registry(""))
    assert res.status == "failed" and res.error.file == str(res.run_dir / target)
    status = json.loads((res.run_dir / "run_status.json").read_text())
    assert status["status"] == "failed" and "df -h" in status["error"]
    assert not (res.run_dir / "metrics.json").exists()
