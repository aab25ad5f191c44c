"""GEARS (Roohani et al. 2023, ``cell-gears`` 0.1.2) as a PerturbFM model, fully offline.

One GEARS model is fitted per training context (GEARS has no cell-type
conditioning). Its GO graph is built from our own GO table with CGIO's GO helpers
(:func:`perturbfm_models.cgio.graphs.load_go_table`, ``go_graph``) and handed to
GEARS as tensors, so nothing is downloaded. See the plugin README for the full
list of offline files, fallbacks and limits.

Length (over 400 lines on purpose): the offline adaptation of one pinned GEARS release
(data conversion, graph hand-over, per-context training) is one unit tied to that release.
"""

from __future__ import annotations

import atexit
import contextlib
import io
import os
import pickle
import random
import shutil
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from perturbfm.errors import ConfigError
from perturbfm.hashing import sha256_file
from perturbfm.interfaces import Model, Prediction
from perturbfm.options import Bool, ConfigModel, FilePath, Float, Int, Names, defaults_of, file_field
from perturbfm.training import TrainingData
from perturbfm_models.baselines.common import read_model_config
from pydantic import Field

if TYPE_CHECKING:
    from perturbfm.dataset import GroupInfo
    from perturbfm_models.cgio.graphs import GoTable

MODEL = "gears"
GEARS_VERSION = "0.1.2"


class GearsConfig(ConfigModel):
    """The ``gears`` model's parameters (see the plugin README)."""

    epochs: Int = Field(20, ge=1, description="training epochs per context")
    lr: Float = Field(1e-3, ge=0.0, description="Adam learning rate")
    weight_decay: Float = Field(5e-4, ge=0.0, description="Adam weight decay")
    batch_size: Int = Field(32, ge=1, description="cells per batch")
    hidden_size: Int = Field(64, ge=1, description="GNN hidden width")
    decoder_hidden_size: Int = Field(16, ge=1, description="decoder hidden width")
    num_go_gnn_layers: Int = Field(1, ge=1, description="GO-graph GNN layers")
    num_gene_gnn_layers: Int = Field(1, ge=1, description="co-expression GNN layers")
    go_k: Int = Field(20, ge=1, description="GO graph: neighbours kept per gene")
    go_min_jaccard: Float = Field(0.1, ge=0.0, description="GO graph: minimum Jaccard similarity of an edge")
    go_table: FilePath = file_field(None, description="GO TSV (SYMBOL GO ONTOLOGY EVIDENCE); null: the packaged table")
    go_exclude_evidence: Names = Field(["ND"], description="GO evidence codes left out of the graph")
    coexpress_k: Int = Field(20, ge=1, description="co-expression graph: neighbours kept per gene")
    coexpress_threshold: Float = Field(0.4, ge=0.0, description="co-expression graph: minimum |r| of an edge")
    direction_lambda: Float = Field(0.1, ge=0.0, description="weight of GEARS's direction loss")
    max_cells_per_group: Int | None = Field(None, ge=2, description="cells per training group (null: all)")
    max_control_cells: Int | None = Field(None, ge=2, description="control cells used in training (null: all)")
    predict_control_cells: Int = Field(300, ge=1, description="control cells a prediction averages over")
    seed: Int = Field(0, ge=0, description="seed of GEARS's initialisation and data order")
    verbose: Bool = Field(False, description="show GEARS's own output")


DEFAULTS: dict[str, Any] = defaults_of(GearsConfig)
MIN_CELLS = 2  # scanpy's DE test (GEARS computes top-20 DE genes per condition) needs >= 2 cells


# --------------------------------------------------------------------------- side effects
@contextlib.contextmanager
def contained_side_effects(seed: int | None, *, quiet: bool = True) -> Iterator[io.StringIO]:
    """Run GEARS code without leaking its global side effects.

    Saves and restores the warning filters (``import gears`` calls
    ``warnings.filterwarnings("ignore")``), the global NumPy / ``random`` / torch RNG
    states (GEARS seeds torch at import and draws control cells from ``np.random``)
    and scanpy's verbosity (set to 0 at import). With ``seed`` the RNGs are seeded
    inside. With ``quiet`` GEARS's stdout/stderr chatter (``print_sys``, tqdm) is
    captured into the yielded buffer.
    """
    import torch

    np_state = np.random.get_state()
    py_state = random.getstate()
    torch_state = torch.get_rng_state()
    sc_mod = sys.modules.get("scanpy")
    sc_verbosity = sc_mod.settings.verbosity if sc_mod is not None else None
    buf = io.StringIO()
    with warnings.catch_warnings():
        try:
            if seed is not None:
                np.random.seed(seed)
                random.seed(seed)
                torch.manual_seed(seed)
            if quiet:
                with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
                    yield buf
            else:
                yield buf
        finally:
            np.random.set_state(np_state)
            random.setstate(py_state)
            torch.set_rng_state(torch_state)
            sc_now = sys.modules.get("scanpy")
            if sc_now is not None:
                if sc_verbosity is not None:
                    sc_now.settings.verbosity = sc_verbosity
                elif sc_mod is None:  # scanpy first imported by gears: undo its verbosity=0
                    sc_now.settings.verbosity = 1


def import_gears() -> Any:
    """``import gears`` with its import-time side effects contained."""
    with contained_side_effects(None, quiet=True):
        import gears  # noqa: F401  (registers gears.* in sys.modules)
        import gears.utils  # noqa: F401
    return sys.modules["gears"]


# --------------------------------------------------------------------------- GO table
_GO_TMP: list[str] = []
_GO_FILTERED: dict[tuple[str, float, tuple[str, ...]], tuple[GoTable, dict[str, set[str]], dict[str, Any]]] = {}


def _go_tmpdir() -> Path:
    if not _GO_TMP:
        d = tempfile.mkdtemp(prefix="pfm-gears-go-")
        _GO_TMP.append(d)
        atexit.register(shutil.rmtree, d, True)
    return Path(_GO_TMP[0])


def load_filtered_go(path: str | None, exclude: Sequence[str]) -> tuple[GoTable, dict[str, set[str]], dict[str, Any]]:
    """Our GO table without the excluded evidence codes, as CGIO's ``GoTable`` (for
    Jaccard) and as GEARS's ``gene2go`` mapping ``{SYMBOL: set(GO ids)}``; cached per
    (path, mtime, excluded codes) in this process."""
    import pandas as pd
    from perturbfm_models.cgio.graphs import default_go_table, load_go_table

    src = Path(path) if path else default_go_table()
    load_go_table(src)  # raises ConfigError naming the file and the fix when it is missing
    key = (str(src.resolve()), src.stat().st_mtime, tuple(sorted(exclude)))
    if key not in _GO_FILTERED:
        df = pd.read_csv(src, sep="\t", dtype=str)
        n_all = len(df)
        if "EVIDENCE" in df.columns and exclude:
            df = df[~df["EVIDENCE"].isin(list(exclude))]
        df = df.dropna(subset=["SYMBOL", "GO"]).drop_duplicates(["SYMBOL", "GO"])
        out = _go_tmpdir() / f"go-{len(_GO_FILTERED)}.tsv"
        df.to_csv(out, sep="\t", index=False)
        table = load_go_table(out)
        gene2go = {str(g): set(s) for g, s in df.groupby("SYMBOL")["GO"]}
        prov = {"source": str(src), "sha256": sha256_file(src), "excluded_evidence": sorted(exclude),
                "rows": n_all, "rows_kept": int(len(df)), "genes_annotated": len(gene2go)}
        _GO_FILTERED[key] = (table, gene2go, prov)
    return _GO_FILTERED[key]


# --------------------------------------------------------------------------- config
def read_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """Validated config (defaults filled in); raises :class:`ConfigError`."""
    return read_model_config(GearsConfig, config, model=MODEL).model_dump()


# --------------------------------------------------------------------------- fitted state
@dataclass
class ContextFit:
    """One fitted GEARS model (one training context)."""

    context: str
    gears: Any
    pert_list: list[str]
    ctrl_x: np.ndarray  # control cells fed to predictions [n, n_genes]
    trained_conditions: list[str]
    info: dict[str, Any] = field(default_factory=dict)


def _condition(genes: Sequence[str]) -> str:
    return f"{genes[0]}+ctrl" if len(genes) == 1 else "+".join(genes)


def _subsample(x: np.ndarray, cap: int | None, rng: np.random.Generator) -> np.ndarray:
    if cap is None or x.shape[0] <= cap:
        return x
    return x[np.sort(rng.choice(x.shape[0], cap, replace=False))]


class GearsModel(Model):
    """GEARS: a GNN over a GO gene-gene graph (perturbation embeddings) and a
    co-expression graph (gene embeddings), trained on single cells.

    Prediction for a query group in context ``c`` with genes ``g1(+g2)``: the mean
    over ``c``'s control cells of (GEARS output − the input control cell), i.e. the
    predicted change GEARS adds to a control cell. GEARS's own ``predict`` averages
    its outputs over 300 control cells drawn at random; we use the first
    ``predict_control_cells`` control cells instead and subtract their own
    expression, which removes that sampling noise from the delta (GEARS's output is
    ``control cell + f(perturbation)``). Fallbacks (the context's mean training
    delta; the global mean when the context has no fitted GEARS model) are noted
    per group.
    """

    name = MODEL
    description = (
        "GEARS (cell-gears 0.1.2, Roohani et al. 2023): GO-graph + co-expression GNN, one model per "
        "training context, offline with our GO table"
    )
    gives_variance = False

    def __init__(self) -> None:
        self._fits: dict[str, ContextFit] = {}
        self._genes: list[str] = []
        self._ctx_mean: dict[str, np.ndarray] = {}
        self._global_mean: np.ndarray | None = None
        self._n_train = 0
        self._dropped: dict[str, str] = {}
        self._cfg: dict[str, Any] = {}
        self._go_prov: dict[str, Any] = {}
        self._log: dict[str, str] = {}

    config_model = GearsConfig

    def default_config(self) -> dict[str, Any]:
        """See :class:`GearsConfig` and the plugin README for every key."""
        return defaults_of(GearsConfig)

    # ------------------------------------------------------------------ fit
    def fit(self, train: TrainingData, val: TrainingData | None, config: Mapping[str, Any]) -> None:
        """Fit one GEARS model per training context (val is not used: GEARS's
        best-epoch selection runs on the training conditions, see README)."""
        cfg = read_config(config)
        self._cfg = cfg
        self._genes = list(train.genes)
        self._fits, self._dropped, self._log = {}, {}, {}
        n = len(self._genes)
        deltas = np.asarray(train.deltas(), dtype=np.float64) if train.groups else np.zeros((0, n))
        ctx = np.array([g.context for g in train.groups], dtype=object)
        self._ctx_mean = {c: deltas[ctx == c].mean(axis=0) for c in sorted(set(ctx))}
        self._global_mean = deltas.mean(axis=0) if train.groups else np.zeros(n)
        self._n_train = len(train.groups)

        table, gene2go, self._go_prov = load_filtered_go(cfg["go_table"], cfg["go_exclude_evidence"])
        # GEARS's perturbation-graph node set: measured genes + every perturbed gene
        # seen in training (all contexts), restricted to genes with GO annotation.
        pert_seen = sorted({x for g in train.groups for x in g.genes})
        gene_set = sorted(set(self._genes) | set(pert_seen))
        pert_names = sorted(g for g in gene_set if g in gene2go)
        node_set = set(pert_names)

        by_ctx: dict[str, list[GroupInfo]] = {}
        for g in train.groups:
            if len(g.genes) > 2:
                self._dropped[g.group_id] = f"{len(g.genes)} perturbed genes (this wrapper trains GEARS on 1-2)"
            elif not set(g.genes) <= node_set:
                miss = sorted(set(g.genes) - node_set)
                self._dropped[g.group_id] = f"gene(s) {', '.join(miss)} not in the GO graph (no GO annotation)"
            elif g.n_cells < MIN_CELLS:
                self._dropped[g.group_id] = f"fewer than {MIN_CELLS} cells"
            else:
                by_ctx.setdefault(g.context, []).append(g)

        for c in sorted(by_ctx):
            self._fits[c] = self._fit_context(train, c, by_ctx[c], gene_set, pert_names, gene2go, table, cfg)

    def _fit_context(self, train: TrainingData, context: str, groups: list[GroupInfo], gene_set: list[str],
                     pert_names: list[str], gene2go: dict[str, set[str]], table: GoTable,
                     cfg: dict[str, Any]) -> ContextFit:
        import anndata as ad
        import pandas as pd
        import scipy.sparse as sp
        from perturbfm_models.cgio.graphs import go_graph

        gears_mod = import_gears()
        from gears.utils import GeneSimNetwork

        t0 = time.time()
        rng = np.random.default_rng(cfg["seed"])
        ctrl = _subsample(train.control_cells(context), cfg["max_control_cells"], rng)
        if ctrl.shape[0] < MIN_CELLS:
            raise ConfigError(f"model {MODEL!r}: context {context!r} has {ctrl.shape[0]} control cells",
                              field="max_control_cells", fix="GEARS needs at least 2 control cells per context")
        blocks, conds = [ctrl], ["ctrl"] * ctrl.shape[0]
        # groups sharing a perturbation (e.g. different covariates) pool into one GEARS condition
        for g in groups:
            x = _subsample(train.cells(g.group_id), cfg["max_cells_per_group"], rng)
            blocks.append(x)
            conds += [_condition(g.genes)] * x.shape[0]
        X = np.vstack(blocks).astype(np.float32)
        obs = pd.DataFrame({"condition": conds, "cell_type": "pfm"}, index=[f"c{i}" for i in range(len(conds))])
        var = pd.DataFrame({"gene_name": self._genes}, index=self._genes)
        adata = ad.AnnData(X=sp.csr_matrix(X), obs=obs, var=var)
        trained = sorted(set(conds) - {"ctrl"})

        with tempfile.TemporaryDirectory(prefix="pfm-gears-") as tmp, \
                contained_side_effects(cfg["seed"], quiet=not cfg["verbose"]) as log:
            data_path = os.path.join(tmp, "gears_data")
            os.makedirs(data_path)
            # offline: GEARS downloads these only when they are absent
            with open(os.path.join(data_path, "gene2go_all.pkl"), "wb") as f:
                pickle.dump({g: gene2go[g] for g in pert_names}, f)
            gene_set_path = os.path.join(tmp, "gene_set.pkl")
            with open(gene_set_path, "wb") as f:
                pickle.dump(gene_set, f)
            split_path = os.path.join(tmp, "split.pkl")
            with open(split_path, "wb") as f:  # val = the training conditions (see README)
                pickle.dump({"train": trained + ["ctrl"], "val": list(trained)}, f)

            pdata = gears_mod.PertData(data_path, gene_set_path=gene_set_path, default_pert_graph=False)
            pdata.new_data_process(dataset_name="pfm", adata=adata, skip_calc_de=False)
            if list(pdata.pert_names) != pert_names:
                raise RuntimeError("GEARS perturbation-graph nodes differ from the wrapper's")
            pdata.prepare_split(split="custom", split_dict_path=split_path)
            pdata.split = "no_test"  # no test loader: the wrapper predicts itself
            # GEARS's train loader drops the last incomplete batch: never let that empty it
            batch_size = min(cfg["batch_size"], X.shape[0])
            pdata.get_dataloader(batch_size=batch_size, test_batch_size=max(batch_size, 128))

            # scipy>=1.15 rejects GEARS.__init__'s pandas-Series row index on a sparse X:
            # a dense X for the constructor only (GEARS needs sparse X later).
            x_sparse = pdata.adata.X
            pdata.adata.X = x_sparse.toarray()
            model = gears_mod.GEARS(pdata, device="cpu")
            pdata.adata.X = x_sparse

            gg = go_graph(table, pert_names, k=cfg["go_k"], min_sim=cfg["go_min_jaccard"])
            # GEARS keeps each gene's k+1 best in-edges, its own self-edge (Jaccard 1) first
            src = [pert_names[i] for i in gg.dst] + pert_names
            dst = [pert_names[i] for i in gg.src] + pert_names
            w = np.concatenate([gg.weight, np.ones(len(pert_names), np.float32)])
            net = GeneSimNetwork(pd.DataFrame({"source": src, "target": dst, "importance": w}),
                                 model.pert_list, node_map=pdata.node_map_pert)
            model.model_initialize(
                hidden_size=cfg["hidden_size"], decoder_hidden_size=cfg["decoder_hidden_size"],
                num_go_gnn_layers=cfg["num_go_gnn_layers"], num_gene_gnn_layers=cfg["num_gene_gnn_layers"],
                num_similar_genes_go_graph=cfg["go_k"], num_similar_genes_co_express_graph=cfg["coexpress_k"],
                coexpress_threshold=cfg["coexpress_threshold"], direction_lambda=cfg["direction_lambda"],
                G_go=net.edge_index, G_go_weight=net.edge_weight,
            )
            model.train(epochs=cfg["epochs"], lr=cfg["lr"], weight_decay=cfg["weight_decay"])
            model.dataloader = None  # drop the cell graphs; predictions build their own
            self._log[context] = log.getvalue()[-4000:]
        info = {
            "n_train_conditions": len(trained), "n_train_cells": int(X.shape[0] - ctrl.shape[0]),
            "n_control_cells": int(ctrl.shape[0]), "go_nodes": len(pert_names),
            "go_edges": int(net.edge_index.shape[1]),
            "coexpress_edges": int(model.config["G_coexpress"].shape[1]), "batch_size_used": batch_size,
            "fit_seconds": round(time.time() - t0, 2),
        }
        keep = min(cfg["predict_control_cells"], ctrl.shape[0])
        return ContextFit(context, model, list(model.pert_list), ctrl[:keep].astype(np.float32), trained, info)

    # ------------------------------------------------------------------ predict
    def _gears_delta(self, fit: ContextFit, genes: Sequence[str]) -> np.ndarray:
        import torch
        from gears.utils import create_cell_graph_for_prediction
        from torch_geometric.loader import DataLoader

        idx = [fit.pert_list.index(g) for g in genes]
        graphs = [create_cell_graph_for_prediction(x, idx, list(genes)) for x in fit.ctrl_x]
        model = fit.gears.best_model.to("cpu")
        model.eval()
        outs = []
        with contained_side_effects(self._cfg.get("seed", 0), quiet=True), torch.no_grad():
            for batch in DataLoader(graphs, batch_size=len(graphs), shuffle=False):
                outs.append(model(batch).detach().cpu().numpy())
        pred = np.concatenate(outs, axis=0)
        return (pred - fit.ctrl_x).mean(axis=0).astype(np.float64)

    def _fallback(self, context: str) -> tuple[np.ndarray, str]:
        assert self._global_mean is not None
        if context in self._ctx_mean:
            return self._ctx_mean[context], f"used the mean training delta of context {context!r}"
        if not self._n_train:
            return self._global_mean, "no training groups at all: used a zero delta"
        return self._global_mean, (f"context {context!r} has no training groups: used the mean delta over all "
                                   f"{self._n_train} training groups")

    def predict(self, queries: list[GroupInfo]) -> Prediction:
        """GEARS's predicted delta per query; declared fallbacks (noted per group)
        where GEARS cannot predict it."""
        if self._global_mean is None:
            raise RuntimeError(f"model {MODEL!r}: call fit() before predict()")
        import_gears()
        out = np.zeros((len(queries), len(self._genes)), dtype=np.float64)
        notes: dict[str, str] = {}
        for i, q in enumerate(queries):
            fit = self._fits.get(q.context)
            genes = list(q.genes)
            why = None
            if not genes:
                why = "query has no perturbed genes"
            elif fit is None:
                why = f"no GEARS model for context {q.context!r} (no usable training groups there)"
            elif len(genes) > 2:
                why = f"{len(genes)} perturbed genes (this wrapper predicts 1-2 with GEARS)"
            else:
                miss = [g for g in genes if g not in fit.pert_list]
                if miss:
                    why = (f"gene(s) {', '.join(miss)} not in GEARS's perturbation graph "
                           "(no GO annotation, or neither measured nor perturbed in training)")
            if why is None:
                assert fit is not None
                out[i] = self._gears_delta(fit, genes)
                continue
            out[i], rule = self._fallback(q.context)
            notes[q.group_id] = f"GEARS fallback: {why}; {rule}"
        return Prediction(
            group_ids=[q.group_id for q in queries], mean_delta=out, notes=notes,
            info={
                "prediction": "mean over the context's first predict_control_cells control cells of "
                              "(GEARS output - input control cell)",
                "fallback_policy": "a query GEARS cannot predict (gene outside the GO perturbation graph, "
                                   "no GEARS model for its context, >2 genes, no genes) gets its context's mean "
                                   "training delta (global mean where the context has no training groups)",
                "contexts_fitted": sorted(self._fits),
                "n_train_groups_dropped": len(self._dropped),
                "n_groups_fallback": len(notes),
            },
        )

    def diagnostics(self) -> dict[str, Any]:
        return {
            "dropped_training_groups": dict(self._dropped),
            "contexts": {c: {**f.info, "trained_conditions": f.trained_conditions} for c, f in self._fits.items()},
            "go_table": self._go_prov,
            "gears_log_tail": dict(self._log),
        }

    def describe(self) -> dict[str, Any]:
        return {
            **super().describe(),
            "wraps": f"cell-gears=={GEARS_VERSION} (MIT licence)",
            "config": dict(self._cfg),
            "go_table": self._go_prov,
            "contexts": {c: f.info for c, f in self._fits.items()},
        }
