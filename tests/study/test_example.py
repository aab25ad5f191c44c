"""The example study: ``pfm-bench study run studies/example.yaml`` (a test copy
with a tiny synthetic dataset and cgio's GO table pointed at a missing file),
checking the content of every file the study writes."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import pytest
import yaml
from study_helpers import REPO, TINY, pfm

EXAMPLE = REPO / "studies" / "example.yaml"


@pytest.fixture
def shared() -> Path:
    from perturbfm.study.spec import default_shared_data

    path = default_shared_data(EXAMPLE.parent)
    if not (path / "perturbench_devel" / "norman19_mcfaline23_devel.h5ad").is_file():
        if os.environ.get("CI") == "true":
            pytest.fail(f"shared data missing at {path} (set PFM_SHARED_DATA)")
        pytest.skip(f"shared data not found at {path}")
    return path


def test_example_plans_every_model(shared: Path, tmp_path: Path) -> None:
    from perturbfm.plugins import get_registry
    from perturbfm.store import ArtifactStore
    from perturbfm.study.plan import build_plan
    from perturbfm.study.spec import load_study

    spec = load_study(EXAMPLE)
    reg = get_registry()
    plan = build_plan(spec, ArtifactStore(tmp_path / "s"), reg)
    expected = {"control-mean", "train-mean", "additive", "linear"} | ({"cgio"} if "cgio" in reg.names("model") else set())
    assert {c.label for c in plan.cells} == expected
    assert len(plan.cells) == len(expected) * 2 * 2
    if "cgio" not in reg.names("model"):
        assert any(e.entry == "cgio" for e in plan.exclusions)


def test_example_study_end_to_end(shared: Path, tmp_path: Path) -> None:
    data = yaml.safe_load(EXAMPLE.read_text())
    data["datasets"]["synthetic"]["options"] = dict(TINY)
    data["models"][-1]["set"]["go_table"] = str(tmp_path / "missing_go_table.tsv.gz")
    study = tmp_path / "example.yaml"
    study.write_text(yaml.safe_dump(data, sort_keys=False))
    store = tmp_path / "store"
    proc = pfm(["study", "run", str(study), "--workers", "2"], store=store, timeout=600)
    sdir = Path(proc.stdout.strip().splitlines()[-1])
    assert sdir == store / "studies" / "example"

    resolved = yaml.safe_load((sdir / "study.resolved.yaml").read_text())
    assert resolved["splits"]["devel_k562_doubles"]["id"] and len(resolved["cells"]) == 16
    assert resolved["datasets"]["devel"]["path"].startswith(str(shared))

    with open(sdir / "summary.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 16 and {r["status"] for r in rows} == {"succeeded"}
    assert {r["label"] for r in rows} == {"control-mean", "train-mean", "additive", "linear"}
    assert {"basic.pcc_delta", "basic.mse", "basic.pcc_delta.calibrated", "run_id", "seed", "split",
            "synthetic"} <= set(rows[0])
    # the devel splits are real data, the example's simulated dataset is marked synthetic
    assert {r["synthetic"] for r in rows if r["split"].startswith("devel")} == {"False"}
    assert {r["synthetic"] for r in rows if not r["split"].startswith("devel")} == {"True"}
    # calibrated values are numbers where defined, empty (never 0) where no group is resolvable
    assert all(r["basic.mse.calibrated"] == "" or float(r["basic.mse.calibrated"]) == float(r["basic.mse.calibrated"])
               for r in rows)
    assert any(r["basic.mse.calibrated"] for r in rows if r["label"] == "additive")
    add = [float(r["basic.pcc_delta"]) for r in rows if r["label"] == "additive" and r["split"] == "devel_k562_doubles"]
    assert len(add) == 2 and all(abs(v - 0.870) < 0.01 for v in add)  # shared/data/README.md figure
    summary = json.loads((sdir / "summary.json").read_text())
    assert summary["metrics"]["basic.mse"]["higher_is_better"] is False and len(summary["rows"]) == 16

    status = json.loads((sdir / "study_status.json").read_text())
    assert status["phase"] == "complete" and status["error"] is None and len(status["cells"]) == 16
    assert all(c["run_id"] and c["status"] == "succeeded" for c in status["cells"].values())
    assert any(a.endswith("summary.csv") for a in status["last_artifacts"])
    md = (sdir / "study_status.md").read_text()
    assert "complete" in md and "16 succeeded" in md and "Suggested next step" in md

    filt = (sdir / "plan_filter_report.md").read_text()
    assert "| model | cgio | 4 |" in filt and "missing_go_table.tsv.gz" in filt and "graph/file not available" in filt

    claims = {c["id"]: c for c in json.loads((sdir / "claims.json").read_text())["claims"]}
    assert claims["c1"]["status"] == "supported" and claims["c1"]["n"] == 5 and claims["c1"]["ci"][0] > 0
    assert claims["c2"]["test"] == "wilcoxon" and "p_value" in claims["c2"]

    html = (sdir / "report.html").read_text()
    assert "SYNTHETIC DATA" in html and "UNVERIFIED DATA" in html and "<img" in html
    assert "c1" in html and "supported" in html and "missing_go_table" in html
    assert "Leaderboards" in html and "compare/devel_k562_doubles/compare.html" in html  # one comparison per split
    board = json.loads((sdir / "compare" / "devel_k562_doubles" / "compare.json").read_text())
    assert board["reference"] == "train-mean" and board["strata"]["all"]["n_groups"] == 5

    prov = (sdir / "provenance_summary.md").read_text()
    for section in ("## Data sources", "## Model definitions", "## Split protocols", "## Statistical analyses"):
        assert section in prov
    assert "norman19_mcfaline23_devel.h5ad" in prov and "**SYNTHETIC**" in prov
    assert "### cgio\n- model `cgio`: EXCLUDED" in prov
    assert "distribution `perturbfm-models` version" in prov and '"ridge_lambda": 0.1' in prov
    assert "generator: `explicit`" in prov and "claim `c1`" in prov and "test bootstrap" in prov
    for c in status["cells"].values():  # every run has its own report with a banner
        assert "class='banner'" in (Path(c["run_dir"]) / "report.html").read_text()
