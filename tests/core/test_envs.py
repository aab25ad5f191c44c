"""Models in their own environment (perturbfm.envs): the spec and its hash, a real uv build
of a numpy-only environment, the file protocol, and every failure as a clean failed run.

The fake model (tests/fixtures/isolated_model) is a test double on SYNTHETIC data."""

# ruff: noqa: F811  (the session fixtures are imported from envs_support, then used as arguments)
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from envs_support import build_or_skip, fake_env, load_fake, shared_envs_dir  # noqa: F401 (fixtures)
from perturbfm.envs import EnvSpec, IsolatedModel, envs_root, find_env, list_envs, machine_sources
from perturbfm.envs.protocol import EnvProtocolError, read_fit_response, read_predict_response
from perturbfm.errors import ConfigError, PluginError
from perturbfm.testing.conformance import HELD_OUT, ModelConformance

FAKE = load_fake()
FakeIsolatedModel = FAKE.FakeIsolatedModel


# ------------------------------------------------------------------ the spec
def _spec(**kw: Any) -> EnvSpec:
    base: dict[str, Any] = {"name": "t", "requirements": ["numpy==2.2.6"], "worker": FAKE.WORKER}
    return EnvSpec(**{**base, **kw})


def test_spec_hash_covers_what_is_installed_only() -> None:
    h = _spec().spec_hash()
    assert len(h) == 64
    assert _spec(name="other", worker="/elsewhere/w.py").spec_hash() == h  # name and worker path: not hashed
    assert _spec(requirements=["numpy==2.2.6", "scipy==1.15.3"]).spec_hash() == \
        _spec(requirements=["scipy==1.15.3", "numpy==2.2.6"]).spec_hash()  # order does not matter
    changed = [_spec(requirements=["numpy==2.2.5"]), _spec(python="3.12"), _spec(constraints=["six==1.16.0"]),
               _spec(find_links=["/opt/wheels"]), _spec(extra_index_urls=["https://example.org/simple"])]
    hashes = {s.spec_hash() for s in changed}
    assert h not in hashes and len(hashes) == len(changed)


def test_machine_sources_are_recorded_not_hashed(monkeypatch: pytest.MonkeyPatch) -> None:
    h = _spec().spec_hash()
    monkeypatch.setenv("PFM_ENV_FIND_LINKS", "/opt/wheels /srv/wheels")
    monkeypatch.setenv("PFM_ENV_EXTRA_INDEX_URLS", "https://example.org/simple")
    assert machine_sources() == {"find_links": ["/opt/wheels", "/srv/wheels"],
                                 "extra_index_urls": ["https://example.org/simple"],
                                 "from": ["PFM_ENV_FIND_LINKS", "PFM_ENV_EXTRA_INDEX_URLS"]}
    assert _spec().spec_hash() == h


@pytest.mark.parametrize("kw, field", [
    ({"requirements": ["numpy>=2"]}, "EnvSpec.requirements"),
    ({"requirements": ["numpy==2.*"]}, "EnvSpec.requirements"),
    ({"requirements": []}, "EnvSpec.requirements"),
    ({"requirements": ["not a requirement!"]}, "EnvSpec.requirements"),
    ({"requirements": "numpy==2.2.6"}, "EnvSpec.requirements"),
    ({"python": "python3"}, "EnvSpec.python"),
    ({"name": "bad name"}, "EnvSpec.name"),
    ({"worker": ""}, "EnvSpec.worker"),
])
def test_bad_specs_are_refused_naming_the_field(kw: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigError) as err:
        _spec(**kw)
    assert err.value.field == field


def test_direct_reference_counts_as_pinned() -> None:
    assert _spec(requirements=["pkg @ https://example.org/pkg-1.0-py3-none-any.whl"]).requirements


# ------------------------------------------------------------------ the protocol, harness side
def _response(tmp_path: Path, body: Any, **arrays: np.ndarray) -> Path:
    for name, arr in arrays.items():
        np.save(tmp_path / f"{name}.npy", arr)
    (tmp_path / "response.json").write_text(json.dumps(body) if not isinstance(body, str) else body)
    return tmp_path


@pytest.mark.parametrize("body, arrays, field", [
    ("{not json", {}, "response.json"),
    ([1, 2], {}, "response.json"),
    ({"protocol": 2, "call": "predict"}, {}, "protocol"),
    ({"protocol": 1, "call": "fit"}, {}, "call"),
    ({"protocol": 1, "call": "predict", "arrays": {}}, {}, "mean_delta"),
    ({"protocol": 1, "call": "predict", "arrays": {"mean_delta": "mean_delta.npy"}},
     {"mean_delta": np.zeros((2, 3))}, "mean_delta"),
    ({"protocol": 1, "call": "predict", "arrays": {"mean_delta": "../x.npy"}}, {}, "mean_delta"),
    ({"protocol": 1, "call": "predict", "arrays": {"mean_delta": "mean_delta.npy", "var_delta": "var_delta.npy"}},
     {"mean_delta": np.zeros((2, 4)), "var_delta": -np.ones((2, 4))}, "var_delta"),
    ({"protocol": 1, "call": "predict", "arrays": {"mean_delta": "mean_delta.npy"}, "notes": ["x"]},
     {"mean_delta": np.zeros((2, 4))}, "notes"),
    ({"protocol": 1, "call": "predict", "arrays": {"mean_delta": "mean_delta.npy"}, "extra": 1},
     {"mean_delta": np.zeros((2, 4))}, "extra"),
    ({"protocol": 1, "call": "predict", "arrays": {"mean_delta": "mean_delta.npy"}},
     {"mean_delta": np.array([["a"] * 4] * 2)}, "mean_delta"),
])
def test_malformed_predict_responses_name_file_and_field(tmp_path: Path, body: Any, arrays: dict[str, Any],
                                                         field: str) -> None:
    call_dir = _response(tmp_path, body, **arrays)
    with pytest.raises(EnvProtocolError) as err:
        read_predict_response(call_dir, "model 'x'", ["a", "b"], 4)
    assert err.value.field == field and err.value.file is not None


def test_a_valid_predict_response_is_read(tmp_path: Path) -> None:
    call_dir = _response(tmp_path, {"protocol": 1, "call": "predict", "notes": {"a": "why"}, "info": {"k": 1},
                                    "arrays": {"mean_delta": "mean_delta.npy"}},
                         mean_delta=np.ones((2, 4), dtype=np.float32))
    out = read_predict_response(call_dir, "model 'x'", ["a", "b"], 4)
    assert out["mean_delta"].dtype == np.float64 and out["var_delta"] is None and out["notes"] == {"a": "why"}


def test_fit_may_not_return_arrays(tmp_path: Path) -> None:
    call_dir = _response(tmp_path, {"protocol": 1, "call": "fit", "arrays": {"w": "w.npy"}})
    with pytest.raises(EnvProtocolError):
        read_fit_response(call_dir, "model 'x'")


def test_training_payload_matches_the_public_training_api() -> None:
    """The payload's indexed fast path sends exactly what TrainingData.cells / control_cells give."""
    from perturbfm.envs.protocol import training_payload
    from perturbfm.testing.data import make_canonical_adata, training_and_queries

    train, _ = training_and_queries(make_canonical_adata(seed=2), HELD_OUT)

    class PublicOnly:  # the same object seen through its public API only
        genes, groups, control, synthetic = train.genes, train.groups, train.control, train.synthetic
        cells = staticmethod(train.cells)
        control_cells = staticmethod(train.control_cells)

    for cap in (5, 10_000):
        fast = training_payload(train, None, max_cells_per_group=cap, seed=3)
        slow = training_payload(PublicOnly(), None, max_cells_per_group=cap, seed=3)
        assert fast[0] == slow[0]
        np.testing.assert_array_equal(fast[1], slow[1])
        np.testing.assert_array_equal(fast[2], slow[2])
        assert fast[1].dtype == np.float32
    meta = fast[0]
    assert {g["split"] for g in meta["groups"]} == {"train", "control"} and meta["control_contexts"] == ["ctxA", "ctxB"]
    assert sum(g["n_cells"] for g in meta["groups"]) == fast[1].shape[0]


# ------------------------------------------------------------------ a real environment
@pytest.mark.usefixtures("fake_env")
class TestFakeIsolatedConformance(ModelConformance):
    """The model conformance suite, through the isolated path (fit and predict in the env's Python)."""

    model_class = FakeIsolatedModel


def test_the_environment_is_built_with_uv_and_isolated(fake_env: Any) -> None:
    assert fake_env.python.exists() and fake_env.info["packages"] == [FAKE.NUMPY_PIN]
    probe = subprocess.run([str(fake_env.python), "-I", "-c", "import perturbfm"], capture_output=True, text=True)
    assert probe.returncode != 0 and "perturbfm" in probe.stderr  # the harness is not importable there


def _store_and_split(tmp_path: Path) -> tuple[Any, str, Any]:
    from perturbfm.datasets import create_split
    from perturbfm.plugins import PluginRegistry
    from perturbfm.store import ArtifactStore
    from perturbfm.testing.data import make_canonical_adata
    from perturbfm.testing.doubles import TestDoublesPlugin, canonical_result

    store = ArtifactStore(tmp_path / "store")
    registry = PluginRegistry(extra_plugins=[("test-doubles", TestDoublesPlugin(FakeIsolatedModel))])
    stored, _ = store.datasets.put(canonical_result(make_canonical_adata()), adapter="test", options={})
    sid, _, _ = create_split(store, stored.hash, "test-explicit", {"test": HELD_OUT}, 0, registry=registry)
    return store, sid, registry


def _run(store: Any, sid: str, registry: Any, *sets: str) -> Any:
    from perturbfm.run import execute_run

    return execute_run(store, model="fake-isolated", split=sid, registry=registry,
                       sets=["run.panels=[test-mean-error]", *sets])


def test_first_run_builds_the_environment_second_reuses_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                           shared_envs_dir: Path) -> None:
    monkeypatch.delenv("PFM_ENVS_DIR")  # this test builds under <store>/envs, for real
    store, sid, registry = _store_and_split(tmp_path)
    first = _run(store, sid, registry)
    assert first.status == "succeeded", first.error
    second = _run(store, sid, registry, "run.seed=1")
    assert second.status == "succeeded", second.error
    provs = [json.loads((r.run_dir / "provenance.json").read_text()) for r in (first, second)]
    spec = FakeIsolatedModel.environment
    for prov, reused in zip(provs, (False, True)):
        env = prov["environment"]
        assert env["reused"] is reused and env["name"] == "fake-isolated" and env["spec_hash"] == spec.spec_hash()
        assert env["packages"] == [FAKE.NUMPY_PIN] and env["python"].startswith(FAKE.PYTHON)
        assert env["build_seconds"] > 0 and env["path"] == str(store.root / "envs" / spec.spec_hash())
        assert env["worker"]["sha256"] == spec.worker_sha256()
        assert env["isolation"]["max_cells_per_group"] == 500 and env["harness"]["python"]
    assert provs[1]["environment"]["isolation"]["subsampling_seed"] == 1
    metrics = json.loads((first.run_dir / "metrics.json").read_text())
    diag = metrics["model_diagnostics"]
    assert diag["fit"]["perturbfm_imported"] is False and diag["fit"]["numpy"] == "2.2.6"
    assert diag["isolation"]["sent"]["max_cells_per_group"] == 500 and diag["fit_notes"]
    assert [r["status"] for r in list_envs(store.root / "envs")] == ["built"]


def test_cells_cap_and_an_ensemble_through_one_environment(tmp_path: Path, fake_env: Any) -> None:
    store, sid, registry = _store_and_split(tmp_path)
    res = _run(store, sid, registry, "run.env_max_cells_per_group=5", "run.ensemble=2")  # two members, one env
    assert res.status == "succeeded", res.error
    diag = json.loads((res.run_dir / "metrics.json").read_text())["model_diagnostics"]
    sent = diag["isolation"]["sent"]
    assert sent["max_cells_per_group"] == 5 and sent["cells"] == 5 * sent["groups"]
    prov = json.loads((res.run_dir / "provenance.json").read_text())
    assert prov["environment"]["isolation"]["max_cells_per_group"] == 5


def _snapshot(root: Path) -> dict[str, Any]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(root.rglob("*"))
            if p.is_file() and ".locks" not in p.parts}


@pytest.mark.parametrize("mode, sets, expect", [
    ("raise_fit", [], "RuntimeError: fake worker failing in fit on purpose"),
    ("exit_predict", [], "exited with status 17"),
    ("import_perturbfm_fit", [], "No module named 'perturbfm'"),
    ("hang_fit", ["run.env_call_timeout_s=3"], "run.env_call_timeout_s = 3 s (timed out"),
    ("wrong_shape", [], "mean_delta has shape (2, 39), expected (2, 40)"),
    ("nan", [], "mean_delta has 1 non-finite value(s)"),
    ("unknown_key", [], "bogus is not a known key"),
    ("stray_note", [], "notes names group(s) that were not queried: no-such-group"),
    ("object_info", [], "info.x is a object, not a JSON value"),
])
def test_failures_are_clean_failed_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fake_env: Any,
                                        mode: str, sets: list[str], expect: str) -> None:
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.setenv("PFM_ENV_WORK_DIR", str(work))
    store, sid, registry = _store_and_split(tmp_path)
    before = _snapshot(fake_env.path)
    t0 = time.monotonic()
    res = _run(store, sid, registry, f"model.mode={mode}", *sets)
    assert time.monotonic() - t0 < 60  # the hanging worker was killed, not waited for
    assert res.status == "failed"
    status = json.loads((res.run_dir / "run_status.json").read_text())
    assert expect in status["error"], status["error"]
    assert status.get("timed_out", False) is (mode == "hang_fit")
    assert not (res.run_dir / "metrics.json").exists()
    assert _snapshot(fake_env.path) == before  # the environment is untouched
    assert find_env(FakeIsolatedModel.environment, fake_env.path.parent) is not None
    assert list(work.iterdir()) == []  # no state folder left behind


def test_run_timeout_kills_the_subprocess(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fake_env: Any) -> None:
    pidfile = tmp_path / "worker.pid"
    monkeypatch.setenv("FAKE_WORKER_PIDFILE", str(pidfile))
    store, sid, registry = _store_and_split(tmp_path)
    res = _run(store, sid, registry, "model.mode=hang_fit", "run.timeout_s=4")
    assert res.status == "failed"
    status = json.loads((res.run_dir / "run_status.json").read_text())
    assert status["timed_out"] is True and "run.timeout_s" in status["error"]
    pid = int(pidfile.read_text())
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_run_timeout_kills_the_subprocess_outside_the_main_thread(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                  fake_env: Any) -> None:
    """No SIGALRM in a worker thread (an executor's): the call's own limit is the time the run has left."""
    import threading

    pidfile = tmp_path / "worker.pid"
    monkeypatch.setenv("FAKE_WORKER_PIDFILE", str(pidfile))
    store, sid, registry = _store_and_split(tmp_path)
    out: list[Any] = []
    t0 = time.monotonic()
    thread = threading.Thread(target=lambda: out.append(_run(store, sid, registry, "model.mode=hang_fit",
                                                             "run.timeout_s=4")))
    thread.start()
    thread.join(120)
    assert out and out[0].status == "failed" and time.monotonic() - t0 < 60
    status = json.loads((out[0].run_dir / "run_status.json").read_text())
    assert status["timed_out"] is True and "left under run.timeout_s" in status["error"], status["error"]
    with pytest.raises(ProcessLookupError):
        os.kill(int(pidfile.read_text()), 0)


def test_direct_use_variance_flag_and_released_state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                     fake_env: Any) -> None:
    from perturbfm.testing.data import make_canonical_adata, training_and_queries

    monkeypatch.setenv("PFM_ENV_WORK_DIR", str(tmp_path))
    train, queries = training_and_queries(make_canonical_adata(), HELD_OUT)

    class ClaimsVariance(FakeIsolatedModel):
        gives_variance = True

    model = ClaimsVariance()
    model.fit(train, None, {"mode": "ok"})
    with pytest.raises(PluginError, match="did not return var_delta"):
        model.predict(queries)
    assert list(tmp_path.iterdir()) == []  # the refused call released the state folder
    plain = FakeIsolatedModel()
    plain.fit(train, None, {"mode": "ok"})
    assert plain.predict(queries).mean_delta.shape == (2, 40)
    plain.close()
    with pytest.raises(PluginError, match="fit\\(\\) again"):
        plain.predict(queries)


def test_direct_use_honours_the_class_timeout(monkeypatch: pytest.MonkeyPatch, fake_env: Any) -> None:
    from perturbfm.envs import EnvTimeoutError
    from perturbfm.testing.data import make_canonical_adata, training_and_queries

    class Impatient(FakeIsolatedModel):
        call_timeout_s = 2.0

    train, _ = training_and_queries(make_canonical_adata(), HELD_OUT)
    with pytest.raises(EnvTimeoutError):
        Impatient().fit(train, None, {"mode": "hang_fit"})


# ------------------------------------------------------------------ building
_KILL_SCRIPT = """
import sys
from pathlib import Path
sys.path.insert(0, sys.argv[2])
from envs_support import load_fake
from perturbfm.envs import EnvSpec, build_env
fake = load_fake()
spec = EnvSpec(name="killed", requirements=[fake.NUMPY_PIN], python=fake.PYTHON, worker=fake.WORKER,
               constraints=["six==1.17.0"])
build_env(spec, Path(sys.argv[1]))
"""


def test_a_killed_build_leaves_nothing_usable(tmp_path: Path) -> None:
    root = tmp_path / "envs"
    proc = subprocess.Popen([sys.executable, "-c", _KILL_SCRIPT, str(root), str(Path(__file__).parent)],
                            start_new_session=True)
    deadline = time.monotonic() + 60
    while not list(root.glob(".build-*")) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    spec = EnvSpec(name="killed", requirements=[FAKE.NUMPY_PIN], python=FAKE.PYTHON, worker=FAKE.WORKER,
                   constraints=["six==1.17.0"])
    assert list(root.glob(".build-*")), "the build was killed before it started"
    assert find_env(spec, root) is None and not (root / spec.spec_hash()).exists()
    assert [r["status"] for r in list_envs(root)] == ["incomplete build (killed or in progress)"]
    built = build_or_skip(spec, root)  # the next build clears the leftovers
    assert not built.reused and not list(root.glob(".build-*"))
    assert [r["status"] for r in list_envs(root)] == ["built"]


def test_a_damaged_environment_is_rebuilt(tmp_path: Path, fake_env: Any) -> None:
    import shutil

    root = tmp_path / "envs"
    spec = FakeIsolatedModel.environment
    shutil.copytree(fake_env.path, root / spec.spec_hash(), symlinks=True)
    (root / spec.spec_hash() / "env.json").unlink()  # e.g. a copy interrupted half-way
    assert find_env(spec, root) is None
    built = build_or_skip(spec, root)
    assert not built.reused and find_env(spec, root) is not None


def test_a_second_builder_waits_for_the_lock_then_reuses(tmp_path: Path, fake_env: Any) -> None:
    """Two runs needing one environment: the second waits on the hash's lock, then finds it built."""
    import shutil
    import threading

    from filelock import FileLock
    from perturbfm.envs import build_env

    root = tmp_path / "envs"
    spec = FakeIsolatedModel.environment
    (root / ".locks").mkdir(parents=True)
    lock = FileLock(str(root / ".locks" / f"{spec.spec_hash()}.lock"))
    lock.acquire()  # "another process" is building
    said: list[str] = []
    out: list[Any] = []
    thread = threading.Thread(target=lambda: out.append(build_env(spec, root, say=said.append)))
    thread.start()
    deadline = time.monotonic() + 30
    while not said and time.monotonic() < deadline:
        time.sleep(0.02)
    assert said and said[0].startswith("waiting for another process building environment 'fake-isolated'")
    shutil.copytree(fake_env.path, root / spec.spec_hash(), symlinks=True)  # what the other builder made
    lock.release()
    thread.join(60)
    assert out and out[0].reused and out[0].path == root / spec.spec_hash() and len(said) == 1


def test_an_uninstallable_requirement_fails_the_run_naming_it(tmp_path: Path, fake_env: Any) -> None:
    class Unbuildable(FakeIsolatedModel):
        name = "fake-isolated"
        environment = EnvSpec(name="unbuildable", requirements=[FAKE.NUMPY_PIN, "numpy-no-such-package==0.0.1"],
                              python=FAKE.PYTHON, worker=FAKE.WORKER)

    from perturbfm.plugins import PluginRegistry
    from perturbfm.testing.doubles import TestDoublesPlugin

    store, sid, _ = _store_and_split(tmp_path)
    registry = PluginRegistry(extra_plugins=[("test-doubles", TestDoublesPlugin(Unbuildable))])
    res = _run(store, sid, registry)
    assert res.status == "failed"
    err = json.loads((res.run_dir / "run_status.json").read_text())["error"]
    if "could not reach" in err or "network" in err:
        pytest.skip("uv cannot reach a package index")
    assert "numpy-no-such-package==0.0.1" in err and "uv said" in err and "not found" in err.lower(), err
    root = envs_root()
    assert find_env(Unbuildable.environment, root) is None
    assert not list(root.glob(".build-*")) and not (root / Unbuildable.environment.spec_hash()).exists()


def test_no_network_is_told_apart_from_a_bad_requirement(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from perturbfm.envs import EnvBuildError, build_env

    monkeypatch.setenv("UV_OFFLINE", "1")  # what uv sees on a machine without a package index
    spec = _spec(requirements=["pfm-test-never-cached==1.0.0"], python=FAKE.PYTHON)
    with pytest.raises(EnvBuildError) as err:
        build_env(spec, tmp_path / "envs")
    assert err.value.unreachable and "pfm-test-never-cached==1.0.0" in err.value.message
    assert "PFM_ENV_FIND_LINKS" in (err.value.fix or "")
    assert [p.name for p in (tmp_path / "envs").iterdir()] == [".locks"]  # nothing half-built left


def test_declaring_an_environment_needs_isolated_model(tmp_path: Path) -> None:
    from perturbfm.interfaces import Model
    from perturbfm.plugins import PluginRegistry
    from perturbfm.testing.doubles import TestDoublesPlugin

    class Plain(Model):
        name = "fake-isolated"
        environment = FakeIsolatedModel.environment

        def fit(self, train: Any, val: Any, config: Any) -> None: ...

        def predict(self, queries: list[Any]) -> Any: ...

    store, sid, _ = _store_and_split(tmp_path)
    registry = PluginRegistry(extra_plugins=[("test-doubles", TestDoublesPlugin(Plain))])
    with pytest.raises(PluginError, match="IsolatedModel"):
        _run(store, sid, registry)
    assert not store.runs_dir.exists() or not list(store.runs_dir.iterdir())
    assert issubclass(FakeIsolatedModel, IsolatedModel)
