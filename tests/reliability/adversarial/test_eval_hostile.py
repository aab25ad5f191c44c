"""Adversarial ``pfm-bench eval`` (issue 18, classes 6 and 13 on the eval side).

Each class is exercised with generated cases: several counts matrices (depths,
dtypes, sparse or dense), several ways of pointing ``--out`` at an input,
several empty panel selections, bad values in either file read in memory or
backed, and damaged files. Where an error gives a fix, the test follows it and
checks that it works.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from harness import check
from inproc import attempt_either

GENES = [f"G{j}" for j in range(12)]


def _obs(n_per: int = 8) -> pd.DataFrame:
    labels = ["control"] * (2 * n_per) + ["A"] * n_per + ["B"] * n_per + ["A+B"] * n_per
    return pd.DataFrame({"perturbation": labels, "cell_line": "k562"}, index=[f"c{i}" for i in range(len(labels))])


def _counts(kind: str, n: int, seed: int) -> object:
    rng = np.random.default_rng(seed)
    lam = {"low": 1.5, "deep": 40.0, "f32": 6.0, "sparse": 0.8, "int32": 12.0}[kind]
    X = rng.poisson(lam, size=(n, len(GENES)))
    X[:, 0] += 3  # every cell has counts; some exceed 1
    if kind == "f32":
        return X.astype(np.float32)
    if kind == "sparse":
        return sp.csr_matrix(X.astype(np.float64))
    if kind == "int32":
        return X.astype(np.int32)
    return X.astype(np.float64)


def _write(path: Path, X: object, obs: pd.DataFrame, **uns: object) -> Path:
    a = ad.AnnData(X=X, obs=obs, var=pd.DataFrame(index=GENES))
    a.uns.update(uns)
    a.write_h5ad(path)
    return path


def _log1p(X: object) -> np.ndarray:
    D = np.asarray(X.toarray() if sp.issparse(X) else X, dtype=np.float64)
    return np.log1p(D / D.sum(axis=1, keepdims=True) * 1e4)


def _pair(d: Path, truth_X: object, pred_X: object, **uns: object) -> tuple[Path, Path]:
    obs = _obs()
    keep = (obs["perturbation"] != "control").to_numpy()
    pred_X = pred_X[np.flatnonzero(keep)] if sp.issparse(pred_X) else np.asarray(pred_X)[keep]
    t = _write(d / "truth.h5ad", truth_X, obs, **uns)
    p = _write(d / "pred.h5ad", pred_X, obs[keep].set_axis([f"p{i}" for i in range(int(keep.sum()))]))
    return p, t


def _eval(p: Path, t: Path, out: Path, *extra: str) -> list[str]:
    return ["eval", "--pred", str(p), "--truth", str(t), "--context-key", "cell_line", "--panels", "basic",
            "--out", str(out), *extra]


@pytest.mark.parametrize("kind", ["low", "deep", "f32", "sparse", "int32"])
def test_raw_counts_without_counts_flag_are_refused_then_the_fix_works(tmp_path, kind):
    X = _counts(kind, len(_obs()), seed=len(kind))
    p, t = _pair(tmp_path, X, X)
    out = tmp_path / "m.json"
    a = check(attempt_either(kind == "low", f"counts without --counts ({kind})", 6, _eval(p, t, out), store=tmp_path / "s",
                      expect_error=True, must_name=["raw counts", "--counts", "fix:", str(t)]))
    assert a.outcome == "clean_error" and not out.exists()
    fixed = check(attempt_either(False, f"counts with --counts ({kind})", 6, _eval(p, t, out, "--counts"), store=tmp_path / "s",
                          expect_error=False))
    assert fixed.outcome == "ok"
    m = json.loads(out.read_text())
    assert m["conventions"]["expression"]["mode"] == "counts" and m["truth"]["expression_space"] == "log1p_cp10k"


@pytest.mark.parametrize("pred_side, flag", [("counts", ()), ("log1p", ("--counts",)), ("scaled", ())])
def test_prediction_in_another_space_than_the_truth_is_refused(tmp_path, pred_side, flag):
    C = _counts("deep", len(_obs()), seed=3)
    L = _log1p(C)
    truth_X = C if flag else L
    pred_X = {"counts": C, "log1p": L, "scaled": _log1p(C) * 20}[pred_side]
    p, t = _pair(tmp_path, truth_X, pred_X)
    out = tmp_path / "m.json"
    a = check(attempt_either(pred_side == "counts", f"pred {pred_side} vs truth {'counts' if flag else 'log1p'}", 6, _eval(p, t, out, *flag),
                      store=tmp_path / "s", expect_error=True,
                      must_name=["different expression spaces", "prediction", str(p), "fix:"]))
    assert not out.exists()
    # the fix: give the prediction in the truth's space
    p2, _ = _pair(tmp_path, truth_X, truth_X)
    check(attempt_either(False, "pred in the truth's space", 6, _eval(p2, t, out, *flag), store=tmp_path / "s",
                  expect_error=False))
    assert a.outcome == "clean_error" and out.exists()


@pytest.mark.parametrize("backed", [False, True])
@pytest.mark.parametrize("side, bad", [("pred", "negative"), ("truth", "negative"), ("pred", "nan"),
                                       ("truth", "inf"), ("pred", "inf")])
def test_bad_values_refused_alike_in_memory_and_backed(tmp_path, backed, side, bad):
    L = _log1p(_counts("deep", len(_obs()), seed=5))
    T, P = L.copy(), L.copy()
    target = P if side == "pred" else T
    target[20, 3] = {"negative": -0.5, "nan": np.nan, "inf": np.inf}[bad]
    p, t = _pair(tmp_path, T, P)
    out = tmp_path / "m.json"
    word = "negative" if bad == "negative" else "NaN or infinite"
    args = _eval(p, t, out, *(["--backed"] if backed else []))
    a = check(attempt_either(backed and side == "pred" and bad == "negative", f"{bad} in {side} (backed={backed})", 6, args, store=tmp_path / "s", expect_error=True,
                      must_name=[word, str(p if side == "pred" else t), "fix:"]))
    assert a.outcome == "clean_error" and not out.exists()


def _link(kind: str, d: Path, t: Path) -> tuple[str, Path | None]:
    if kind == "same":
        return str(t), None
    if kind == "relative":
        return os.path.relpath(t, d / "sub"), d / "sub"
    if kind == "dotdot":
        return str(d / "sub" / ".." / t.name), None
    if kind == "symlink":
        (d / "link.h5ad").symlink_to(t)
        return str(d / "link.h5ad"), None
    os.link(t, d / "hard.h5ad")
    return str(d / "hard.h5ad"), None


@pytest.mark.parametrize("kind, which", [("same", "truth"), ("relative", "truth"), ("dotdot", "truth"),
                                         ("symlink", "truth"), ("hardlink", "truth"), ("same", "pred"),
                                         ("symlink", "pred"), ("hardlink", "pred")])
def test_out_pointing_at_an_input_is_refused(tmp_path, kind, which):
    L = _log1p(_counts("deep", len(_obs()), seed=7))
    p, t = _pair(tmp_path, L, L)
    (tmp_path / "sub").mkdir()
    target = t if which == "truth" else p
    before = target.read_bytes()
    out, cwd = _link(kind, tmp_path, target)
    args = ["eval", "--pred", str(p), "--truth", str(t), "--context-key", "cell_line", "--panels", "basic",
            "--out", out]
    a = check(attempt_either(kind == "symlink" and which == "truth", f"--out is the {which} ({kind})", 6, args, store=tmp_path / "s", expect_error=True,
                      must_name=["--out", "overwritten", "fix:"], cwd=cwd))
    assert a.outcome == "clean_error" and target.read_bytes() == before
    args[-1] = str(tmp_path / "results" / "metrics.json")  # the fix: write elsewhere
    check(attempt_either(False, "--out elsewhere", 6, args, store=tmp_path / "s", expect_error=False))


@pytest.mark.parametrize("opts, name", [
    (["--panels", ","], "--panels"), (["--panels", " , ,"], "--panels"), (["--panels", ""], "--panels"),
    (["--max-cells", "0"], "--max-cells"), (["--max-cells", "-3"], "--max-cells"), (["--seed", "-1"], "--seed"),
])
def test_empty_panels_and_bad_numbers_are_option_errors(tmp_path, opts, name):
    L = _log1p(_counts("deep", len(_obs()), seed=9))
    p, t = _pair(tmp_path, L, L)
    out = tmp_path / "m.json"
    args = ["eval", "--pred", str(p), "--truth", str(t), "--context-key", "cell_line", "--out", str(out), *opts]
    a = check(attempt_either(opts == ["--panels", ","], f"eval {' '.join(opts)!r}", 6, args, store=tmp_path / "s", expect_error=True,
                      must_name=[name, "fix:"]))
    assert a.outcome == "clean_error" and not out.exists()


@pytest.mark.parametrize("where", ["perturbfm", "plain"])
def test_synthetic_truth_is_labelled(tmp_path, where):
    L = _log1p(_counts("deep", len(_obs()), seed=11))
    uns = {"perturbfm": {"synthetic": True}} if where == "perturbfm" else {"synthetic": True}
    p, t = _pair(tmp_path, L, L, **uns)
    out = tmp_path / "m.json"
    a = check(attempt_either(where == "plain", f"synthetic truth ({where})", 3, _eval(p, t, out), store=tmp_path / "s", expect_error=False))
    m = json.loads(out.read_text())
    assert m["synthetic"] is True and m["truth"]["synthetic"] is True and "SYNTHETIC" in m["synthetic_note"]
    assert "SYNTHETIC" in a.stderr


def _replace_x(src: Path, dst: Path, data: object) -> Path:
    dst.write_bytes(src.read_bytes())
    with h5py.File(dst, "r+") as f:
        del f["X"]
        d = f.create_dataset("X", data=data)
        d.attrs["encoding-type"], d.attrs["encoding-version"] = "array", "0.2.0"
    return dst


def _corrupt_chunk(path: Path) -> None:
    with h5py.File(path, "r") as f:
        dset = f["X"]
        info = dset.id.get_chunk_info(dset.id.get_num_chunks() - 1)
    with open(path, "r+b") as fh:
        fh.seek(info.byte_offset + info.size // 3)
        fh.write(b"\x00garbage\xff" * 16)


@pytest.mark.parametrize("backed", [False, True])
@pytest.mark.parametrize("damage", ["strings", "vlen-strings", "complex", "no-X", "corrupt-chunks", "not-h5ad",
                                    "missing", "directory"])
def test_damaged_files_give_clean_errors_naming_the_file(tmp_path, backed, damage):
    L = _log1p(_counts("deep", len(_obs()), seed=13))
    p, t = _pair(tmp_path, L, L)
    bad = tmp_path / "bad.h5ad"
    n = len(_obs())
    words = {"strings": "strings", "vlen-strings": "objects", "complex": "complex", "no-X": "no expression matrix",
             "corrupt-chunks": "", "not-h5ad": "cannot read", "missing": "does not exist",
             "directory": "not a regular file"}[damage]
    if damage == "strings":
        _replace_x(t, bad, np.full((n, len(GENES)), b"1.5", dtype="S3"))
    elif damage == "vlen-strings":
        _replace_x(t, bad, np.full((n, len(GENES)), "x", dtype=h5py.string_dtype()))
    elif damage == "complex":
        _replace_x(t, bad, L + 1j)
    elif damage == "no-X":
        ad.AnnData(obs=_obs(), var=pd.DataFrame(index=GENES)).write_h5ad(bad)
    elif damage == "corrupt-chunks":
        big = pd.concat([_obs(200)])
        _write(bad, _log1p(np.random.default_rng(0).poisson(9, size=(len(big), len(GENES))) + 1), big)
        a = ad.read_h5ad(bad)
        a.write_h5ad(bad, compression="gzip")
        _corrupt_chunk(bad)
    elif damage == "not-h5ad":
        bad.write_bytes(b"\x89HDF\r\n not really" * 40)
    elif damage == "directory":
        bad.mkdir()
    out = tmp_path / "m.json"
    args = _eval(p, bad, out, *(["--backed"] if backed else []))
    a = check(attempt_either(backed and damage == "corrupt-chunks", f"truth {damage} (backed={backed})", 13, args, store=tmp_path / "s", expect_error=True,
                      must_name=[w for w in (words, str(bad), "fix:") if w]))
    assert a.outcome == "clean_error" and not out.exists()
