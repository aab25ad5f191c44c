"""End-to-end tests of ``pfm-bench eval`` on small .h5ad files."""

from __future__ import annotations

import json

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from perturbfm.cli import main
from perturbfm.testing import make_canonical_adata
from perturbfm_metrics.vcc import VccPanel


def _user_files(tmp_path, *, drop_group=None, extra_group=False, nan=False, genes="same"):
    """A truth and a prediction file in the user's format (obs 'perturbation', 'cell_line')."""
    src = make_canonical_adata(n_genes=30, cells_per_group=12, n_control=20, seed=4, sparse=False)
    obs = pd.DataFrame({"perturbation": src.obs["pfm_perturbation"].astype(str).to_numpy(),
                        "cell_line": src.obs["pfm_context"].astype(str).to_numpy()}, index=src.obs_names)
    X = np.asarray(src.X, dtype=np.float64)
    truth = ad.AnnData(X=X, obs=obs, var=pd.DataFrame(index=list(src.var_names)))
    rng = np.random.default_rng(0)
    keep = obs["perturbation"].to_numpy() != "control"
    if drop_group is not None:
        keep &= ~((obs["perturbation"] == drop_group[0]) & (obs["cell_line"] == drop_group[1])).to_numpy()
    pX = np.clip(X[keep] + 0.1 * rng.standard_normal((int(keep.sum()), X.shape[1])), 0, None)
    pobs = obs[keep].copy()
    if extra_group:
        pobs.iloc[:3, 0] = "NOVEL"
    if nan:
        pX[np.flatnonzero(pobs["perturbation"].to_numpy() == "G3")[0], 7] = np.nan
    var = list(src.var_names)
    if genes == "reversed":
        pX, var = pX[:, ::-1], var[::-1]
    elif genes == "differ":
        var[0] = "NOTAGENE"
    pred = ad.AnnData(X=pX, obs=pobs, var=pd.DataFrame(index=var))
    pred.obs_names = [f"p{i}" for i in range(pred.n_obs)]
    truth.write_h5ad(tmp_path / "truth.h5ad")
    pred.write_h5ad(tmp_path / "pred.h5ad")
    return tmp_path / "pred.h5ad", tmp_path / "truth.h5ad"


def _eval(tmp_path, pred, truth, *extra):
    out = tmp_path / "out" / "metrics.json"
    rc = main(["eval", "--pred", str(pred), "--truth", str(truth), "--context-key", "cell_line",
               "--out", str(out), *extra])
    return rc, out


def test_complete_eval_writes_metrics(tmp_path):
    pred, truth = _user_files(tmp_path)
    rc, out = _eval(tmp_path, pred, truth, "--panels", "basic,vcc,uncertainty")
    assert rc == 0 and out.exists()
    m = json.loads(out.read_text())
    assert m["n_groups"] == 16 and set(m["panels"]) == {"basic", "vcc", "uncertainty"}
    vcc = m["panels"]["vcc"]["metrics"]
    assert 0 < vcc["mae"]["global"] < 0.2
    assert vcc["discrimination_score_l1"]["global"] == pytest.approx(1.0)
    assert set(vcc["overlap_at_N"]["per_context"]) == {"ctxA", "ctxB"}
    assert "not_applicable" in m["panels"]["uncertainty"]["metrics"]["coverage@90"]
    assert m["conventions"]["gene_order"] == "same genes in the same order"


def test_reordered_genes_are_aligned(tmp_path):
    pred, truth = _user_files(tmp_path)
    _, out = _eval(tmp_path, pred, truth)
    base = json.loads(out.read_text())["panels"]
    pred, truth = _user_files(tmp_path, genes="reversed")
    rc, out = _eval(tmp_path, pred, truth)
    assert rc == 0
    m = json.loads(out.read_text())
    assert "reordered" in m["conventions"]["gene_order"]
    for panel in ("basic", "vcc"):
        for key, e in base[panel]["metrics"].items():
            assert m["panels"][panel]["metrics"][key]["global"] == pytest.approx(e["global"], rel=1e-12)


@pytest.mark.parametrize("case, words", [
    ({"nan": True}, ["NaN", "G3@ctx", "G7"]),
    ({"genes": "differ"}, ["genes differ", "NOTAGENE", "G0"]),
    ({"drop_group": ("G2", "ctxB")}, ["no predicted cells", "G2@ctxB"]),
    ({"extra_group": True}, ["not in the truth", "NOVEL@"]),
])
def test_bad_input_is_refused(tmp_path, capsys, case, words):
    pred, truth = _user_files(tmp_path, **case)
    rc, out = _eval(tmp_path, pred, truth)
    err = " ".join(capsys.readouterr().err.split())
    assert rc == 2 and not out.exists()
    for w in words:
        assert w in err, (w, err)
    assert "fix:" in err


def test_incomplete_panel_exits_1_without_metrics(tmp_path, capsys, monkeypatch):
    pred, truth = _user_files(tmp_path)
    monkeypatch.setattr(VccPanel, "compute", lambda self, data: {"mae": None})
    rc, out = _eval(tmp_path, pred, truth)
    assert rc == 1 and not out.exists()
    assert "NOT written" in capsys.readouterr().err


def test_backed_eval_matches_in_memory(tmp_path):
    pred, truth = _user_files(tmp_path)
    rc, out = _eval(tmp_path, pred, truth, "--panels", "basic,vcc,perturbench,scperturbench")
    rc_b, out_b = _eval(tmp_path / "b", pred, truth, "--panels", "basic,vcc,perturbench,scperturbench", "--backed")
    assert rc == 0 and rc_b == 0
    m, mb = json.loads(out.read_text()), json.loads(out_b.read_text())
    assert mb["conventions"]["backed"] is True
    for pname, panel in m["panels"].items():
        for key, e in panel["metrics"].items():
            eb = mb["panels"][pname]["metrics"][key]
            assert eb["global"] == pytest.approx(e["global"], rel=1e-9, abs=1e-12), (pname, key)


def test_json_output_and_the_api_give_the_same_rows(tmp_path, capsys):
    from perturbfm.api import evaluate

    pred, truth = _user_files(tmp_path)
    rc, out = _eval(tmp_path, pred, truth, "--panels", "basic", "--json")
    assert rc == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["metrics_path"] == str(out.resolve()) and printed["synthetic"] is False
    frame = evaluate(str(pred), str(truth), context_key="cell_line", panels="basic")
    assert [r["metric"] for r in printed["rows"]] == frame["metric"].tolist()
    assert [r["raw"] for r in printed["rows"]] == pytest.approx(frame["raw"].tolist(), rel=1e-12)


def test_raw_counts_are_refused_without_counts_and_scored_with_it(tmp_path, capsys):
    pred, truth = _user_files(tmp_path)
    for path in (pred, truth):
        a = ad.read_h5ad(path)
        a.X = np.round(np.expm1(np.asarray(a.X)) * 7)
        a.write_h5ad(path)
    rc, out = _eval(tmp_path, pred, truth, "--panels", "basic")
    err = " ".join(capsys.readouterr().err.split())
    assert rc == 2 and not out.exists() and "raw counts" in err and "--counts" in err
    rc, out = _eval(tmp_path, pred, truth, "--panels", "basic", "--counts")
    assert rc == 0
    m = json.loads(out.read_text())
    assert m["truth"]["expression_space"] == "log1p_cp10k" and m["conventions"]["expression"]["mode"] == "counts"


def test_synthetic_truth_is_written_and_printed(tmp_path, capsys):
    pred, truth = _user_files(tmp_path)
    a = ad.read_h5ad(truth)
    a.uns["perturbfm"] = {"dataset_hash": "x", "synthetic": True}
    a.write_h5ad(truth)
    rc, out = _eval(tmp_path, pred, truth, "--panels", "basic")
    assert rc == 0 and "SYNTHETIC" in capsys.readouterr().err
    m = json.loads(out.read_text())
    assert m["synthetic"] is True and "SYNTHETIC" in m["synthetic_note"]
