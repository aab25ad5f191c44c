"""Adversarial ``pfm-bench data import`` (issue 18, class 12 and the import side of 13).

Labels with the combo delimiter inside a name, matrices that are not expression
(complex, strings, objects, none), counts whose per-cell total overflows, and
damaged compressed chunks read in memory or backed -- each with generated cases.
Where an error gives a fix, the test follows it and checks that it works.
"""

from __future__ import annotations

import json
from pathlib import Path

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import pytest
from harness import check
from inproc import attempt_either

GENES = [f"G{j}" for j in range(10)]


def _adata(labels: list[str], X: np.ndarray | None = None, n_ctrl: int = 6, per: int = 4) -> ad.AnnData:
    pert = ["control"] * n_ctrl + [lab for lab in labels for _ in range(per)]
    obs = pd.DataFrame({"perturbation": pert}, index=[f"cell{i}" for i in range(len(pert))])
    if X is None:
        X = np.random.default_rng(len(pert)).poisson(5, size=(len(pert), len(GENES))).astype(np.float64) + 1
    return ad.AnnData(X=X, obs=obs, var=pd.DataFrame(index=GENES))


def _import(path: Path, *extra: str) -> list[str]:
    return ["data", "import", str(path), "--perturbation-key", "perturbation", "--control", "control", "--json",
            *extra]


def _compound_names(seed: int) -> list[str]:
    """Generated compound names holding '+' inside brackets, in several bracket styles."""
    rng = np.random.default_rng(seed)
    stems = ["JQ1", "Drug", "thalidomide", "ibuprofen", "Cmpd-7", "Na", "ATRA"]
    signs = ["+", "+/-", "-/+", "+,+"]
    out = set()
    while len(out) < 4:
        stem, sign = stems[rng.integers(len(stems))], signs[rng.integers(len(signs))]
        o, c = [("(", ")"), ("[", "]"), ("{", "}")][rng.integers(3)]
        out.add(f"{o}{sign}{c}-{stem}" if rng.random() < 0.5 else f"{stem}{o}{sign}{c}")
    return sorted(out)


@pytest.mark.parametrize("names", [
    ["Drug(+)", "(+)-JQ1", "(+/-)-thalidomide"], _compound_names(1), _compound_names(2), _compound_names(3),
])
def test_plus_inside_compound_names_is_not_split(tmp_path, names):
    combos = [f"{names[0]}+{names[1]}", f"GATA1+{names[-1]}"]
    path = tmp_path / "screen.h5ad"
    _adata(names + combos + ["KLF1"]).write_h5ad(path)
    a = check(attempt_either(names[0] == "Drug(+)", f"compound names {names}", 12, _import(path), store=tmp_path / "s", expect_error=False))
    manifest = json.loads(a.stdout)["manifest"]
    assert sorted(manifest["perturbed_genes"]) == sorted({*names, "GATA1", "KLF1"})
    assert manifest["n_groups"] == len(names) + len(combos) + 1
    for bad in (")", "(", "Drug(", ")-JQ1", "-/"):
        assert bad not in manifest["perturbed_genes"]


@pytest.mark.parametrize("label", ["HLA+DR_B", "P+Q", "A+B+C_D", "X +Y"])
def test_a_name_that_cannot_be_told_from_a_combination_is_refused_and_the_fix_works(tmp_path, label):
    path = tmp_path / "screen.h5ad"
    _adata([label, "E"]).write_h5ad(path)
    a = check(attempt_either(label == "P+Q", f"ambiguous {label!r} with delimiter _", 12, _import(path, "--combo-delimiter", "_"),
                      store=tmp_path / "s", expect_error=True,
                      must_name=["--combo-delimiter", "cannot be told apart", str(path), "fix:"]))
    assert a.outcome == "clean_error"
    # the fix: bracket the name that holds the '+'
    fixed = "_".join(f"({p})" if "+" in p else p for p in label.split("_"))
    _adata([fixed, "E"]).write_h5ad(path)
    ok = check(attempt_either(False, f"bracketed {fixed!r}", 12, _import(path, "--combo-delimiter", "_"), store=tmp_path / "s",
                       expect_error=False))
    genes = json.loads(ok.stdout)["manifest"]["perturbed_genes"]
    assert all(g.startswith("(") or "+" not in g for g in genes)


def _overflow(kind: str) -> np.ndarray:
    X = _adata(["A", "B"]).X.copy()
    if kind == "two-maxima":
        X[7, :2] = 1e308
    elif kind == "three-large":
        X[7, :3] = 8e307
    elif kind == "all-genes":
        X[7, :] = 1e307 * 5
    else:  # float max
        X[7, 4:6] = np.finfo(np.float64).max
    return X


@pytest.mark.parametrize("kind", ["two-maxima", "three-large", "all-genes", "float-max"])
@pytest.mark.parametrize("backed", [False, True])
def test_counts_that_overflow_are_refused_naming_the_cell(tmp_path, kind, backed):
    path = tmp_path / "screen.h5ad"
    _adata(["A", "B"], X=_overflow(kind)).write_h5ad(path)
    extra = ["--expression", "counts"] + (["--opt", "backed=true"] if backed else [])
    a = check(attempt_either(kind == "two-maxima" and not backed, f"overflowing counts ({kind}, backed={backed})", 12, _import(path, *extra),
                      store=tmp_path / "s", expect_error=True, must_name=["cell7", "overflow", str(path), "fix:"]))
    assert a.outcome == "clean_error"
    X = _overflow(kind)
    X[7] = 3  # the fix: correct that cell's counts
    _adata(["A", "B"], X=X).write_h5ad(path)
    check(attempt_either(False, "corrected counts", 12, _import(path, *extra), store=tmp_path / "s", expect_error=False))


def _replace_x(path: Path, data: object) -> None:
    with h5py.File(path, "r+") as f:
        del f["X"]
        d = f.create_dataset("X", data=data)
        d.attrs["encoding-type"], d.attrs["encoding-version"] = "array", "0.2.0"


@pytest.mark.parametrize("backed", [False, True])
@pytest.mark.parametrize("kind, words", [
    ("complex", ["complex"]), ("complex64", ["complex"]), ("bytes", ["strings"]), ("unicode-numbers", ["strings"]),
    ("vlen", ["objects"]), ("corrupt-chunks", [""]),
])
def test_matrices_that_are_not_expression_give_clean_errors(tmp_path, backed, kind, words):
    path = tmp_path / "screen.h5ad"
    a0 = _adata(["A", "B"], n_ctrl=200, per=200) if kind == "corrupt-chunks" else _adata(["A", "B"])
    a0.write_h5ad(path, compression="gzip" if kind == "corrupt-chunks" else None)
    shape = a0.shape
    if kind == "complex":
        _replace_x(path, a0.X + 2j)
    elif kind == "complex64":
        _replace_x(path, (a0.X + 0j).astype(np.complex64))
    elif kind == "bytes":
        _replace_x(path, np.full(shape, b"3", dtype="S1"))
    elif kind == "unicode-numbers":
        _replace_x(path, np.full(shape, b"3.0", dtype="S3"))
    elif kind == "vlen":
        _replace_x(path, np.full(shape, "3", dtype=h5py.string_dtype()))
    else:
        with h5py.File(path, "r") as f:
            info = f["X"].id.get_chunk_info(f["X"].id.get_num_chunks() - 1)
        with open(path, "r+b") as fh:
            fh.seek(info.byte_offset + info.size // 3)
            fh.write(b"\x00garbage\xff" * 16)
    extra = ["--opt", "backed=true"] if backed else []
    a = check(attempt_either(backed and kind == "corrupt-chunks", f"X {kind} (backed={backed})", 13, _import(path, *extra), store=tmp_path / "s",
                      expect_error=True, must_name=[w for w in (*words, str(path), "fix:") if w]))
    assert a.outcome == "clean_error"


@pytest.mark.parametrize("with_layer", ["counts", "raw_counts"])
def test_a_file_without_x_says_so_and_the_layer_fix_works(tmp_path, with_layer):
    path = tmp_path / "screen.h5ad"
    src = _adata(["A", "B"])
    b = ad.AnnData(obs=src.obs, var=src.var)
    b.layers[with_layer] = src.X
    b.write_h5ad(path)
    a = check(attempt_either(with_layer == "counts", "no X", 12, _import(path), store=tmp_path / "s", expect_error=True,
                      must_name=["no expression matrix", "--layer", str(path), "fix:"]))
    assert "NaN" not in a.stderr
    ok = check(attempt_either(False, "no X, --layer", 12, _import(path, "--layer", with_layer), store=tmp_path / "s",
                       expect_error=False))
    m = json.loads(ok.stdout)["manifest"]
    assert m["expression_space"] == "log1p_cp10k" and m["source"]["layer"] == with_layer
