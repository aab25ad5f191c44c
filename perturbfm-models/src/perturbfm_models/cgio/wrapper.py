"""The plugin-facing CGIO model: builds graphs, trains :class:`CGIONet`, predicts with notes.

About 510 lines, on purpose: it is one class, the model as plugins see it (fit, predict with a note
for every fallback or switched-off component, predict-time graph extension, diagnostics, report
section); contexts and their transfer live in :mod:`.contexts`; the steps of
``fit`` live in :mod:`.fitting`, graphs in :mod:`.graphs`, the closed-form base in :mod:`.residual`.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import scipy.sparse as sp
from perturbfm.errors import ConfigError
from perturbfm.interfaces import Model, Prediction, ReportSection
from perturbfm.training import TrainingData

from perturbfm_models.baselines.common import join_notes, require_fitted

from . import contexts as C
from . import graphs as G
from . import residual as R
from .config import CGIOConfig

# torch is the optional ``cgio`` extra and slow to import: it is loaded on first fit/predict, so
# registering the plugin (every `pfm-bench` call) neither needs nor pays for it
torch: Any = None
_TORCH_ERROR: ImportError | None = None


def _ensure_torch() -> None:
    """Import torch into this module's globals, once (the torch-backed modules :mod:`.model`,
    :mod:`.train` and :mod:`.fitting` are imported where they are used, after this)."""
    global torch, _TORCH_ERROR
    if torch is not None or _TORCH_ERROR is not None:
        return
    try:
        import torch as _torch
    except ImportError as exc:  # pragma: no cover - exercised only without torch
        _TORCH_ERROR = exc
        return
    torch = _torch


CHEM_PREFIX = "pert:"  # node name prefix of a non-gene perturbation's identity (never a graph gene)


def is_genetic(g: GroupInfo) -> bool:
    """Whether ``g``'s perturbation is a gene set: its ``kind`` (``genetic`` | ``chemical`` |
    ``other``, recorded by the dataset) says so, or it records none (read as genetic)."""
    kind = getattr(g, "kind", None)
    return kind is None or str(kind) in ("genetic", "control")


def tokens(g: GroupInfo) -> tuple[str, ...]:
    """The nodes a group's perturbation enters at: its genes, or for a drug, stimulus or other
    non-gene perturbation one identity node per component (isolated: no graph has an edge to
    it, so it acts as an identity embedding learned from the training groups)."""
    return g.genes if is_genetic(g) else tuple(CHEM_PREFIX + x for x in g.genes)


if TYPE_CHECKING:
    from perturbfm.dataset import GroupInfo

    from .model import CGIONet, NetSpec
    from .train import Batch


class CGIOModel(Model):
    """CGIO: gene-set interventions through uncertain graph priors, with a
    context-conditioned low-rank operator.

    The perturbed gene set is a mask over a node universe (measured genes ∪
    perturbed genes ∪ graph genes within ``go_hops`` top-k hops, at most
    ``max_nodes``); it is propagated over one or several gene graphs, weighted by
    learned trust gates, decoded by a context-mixed low-rank basis into a mean
    and a variance of the pseudobulk delta (Gaussian NLL). Combinations whose
    singles were all measured in the query's context and covariates are predicted
    as the sum of those single deltas plus the network's own non-additive
    correction ``f(AB) − f(A) − f(B)`` (``additive_prior``, with ``residual`` off).

    With ``residual`` (default) the network learns only a correction to a closed-form
    base (:mod:`.residual`): a non-negative least-squares stack (``stacking``, weights per
    base kind fitted leave-self-out on the training groups) of the sum of measured singles
    (combinations whose singles were measured in the query's context), the perturbation's
    mean delta in other contexts, and the context's mean training delta; the singles of the
    sum are empirical-Bayes estimates of their deltas (``denoise``: per-gene normal prior per
    context, shrinking effects no larger than their sampling noise); ``cv_folds`` members are cross-fitted on the training groups and averaged,
    and their out-of-fold predictions fit, per base kind, a gate ``s`` on the
    correction and (``shrinkage``) a factor ``λ`` shrinking the delta toward zero:
    ``delta = λ (base + s · correction)`` (``λ = 1`` for the additive base). Do no harm: ``s``
    and ``λ`` start from the base (``s = 0``, ``λ = 1``) and are kept only where they lower
    the base's out-of-fold error; with fewer than ``2 × cv_folds`` groups the members are
    leave-one-group-out, with fewer than 3 the correction is never applied (noted per group).

    A context is represented by its control cells (:mod:`.contexts`): the perturbation's
    deltas in other contexts reach the query's context by a similarity-weighted or
    baseline-dependent transfer chosen leave-one-context-out (``context_transfer``), and the
    predicted mean stays >= 0 on non-negative data (``floor``). Non-gene perturbations
    (dataset kind ``chemical`` / ``other``) enter at isolated identity nodes, never a graph gene.
    """

    name = "cgio"
    description = ("Graph-propagated gene-set interventions with gated GO/co-expression priors and a "
                   "context-conditioned low-rank operator; Gaussian mean and variance of the delta.")
    gives_variance = True

    # the fitted state (set by fit, extended by predict)
    _genes: list[str]
    _gene_pos: dict[str, int]
    _go: G.GoTable | None
    _universe: list[str]
    _graphs: list[G.GeneGraph]
    _extended: list[str]
    _symbols: dict[str, str]
    _dropped_graphs: list[dict[str, Any]]
    _silent: set[str]
    _adjs: list[sp.csr_matrix]
    _hops: np.ndarray
    _trained_genes: set[str]
    _ctx: dict[str, int]
    _time_scale: float
    _index: R.BaseIndex
    _basis: np.ndarray
    _bias: np.ndarray
    _logvar: np.ndarray
    _spec: NetSpec
    _device: Any
    _nets: list[CGIONet]
    _shrink: dict[str, dict[str, Any]]
    _var_scale: dict[str, np.ndarray]
    _self_effect: dict[str, dict[str, float]]
    _fit_groups: list[GroupInfo]
    _singles: dict[tuple[str, str, str], np.ndarray]

    def __init__(self) -> None:
        self._cfg: CGIOConfig | None = None
        self._net: CGIONet | None = None
        self._fitted: bool | None = None
        self._profiles: C.ContextProfiles | None = None
        self._transfer: C.ContextTransfer | None = None
        self._diag: dict[str, Any] = {}

    config_model = CGIOConfig

    def default_config(self) -> dict[str, Any]:
        """See :class:`perturbfm_models.cgio.config.CGIOConfig`."""
        from perturbfm.options import defaults_of

        return defaults_of(CGIOConfig)

    # ------------------------------------------------------------------ graphs
    def _build_graphs(self, train: TrainingData, seeds: list[str]) -> tuple[list[str], list[G.GeneGraph]]:
        """The node universe and the configured graphs (none when ``use_graphs`` is off)."""
        cfg = self._cfg
        assert cfg is not None
        self._symbols = G.symbol_map(train)
        self._dropped_graphs = []
        if not cfg.use_graphs:
            return seeds, []
        # keyed by gene symbol, coverage per graph, a graph without edges among the universe dropped (graphs.py)
        universe, out, self._go, self._dropped_graphs = G.build_graphs(
            train, seeds, graphs=cfg.graphs, go_table=cfg.go_table, go_k=cfg.go_k, go_min_jaccard=cfg.go_min_jaccard,
            go_hops=cfg.go_hops, max_nodes=cfg.max_nodes, coexpr_k=cfg.coexpr_k,
            coexpr_min_abs_r=cfg.coexpr_min_abs_r, coexpr_source=cfg.coexpr_source, edge_list=cfg.edge_list,
            coexpr_max_cells=cfg.coexpr_max_cells, seed=cfg.seed)
        return universe, out

    def _adjacency(self, universe: Sequence[str]) -> list[sp.csr_matrix]:
        return [G.normalised_adjacency(g.reindex(universe, self._symbols)) for g in self._graphs]

    def _extend(self, new: list[str]) -> None:
        """Attach query genes outside the universe: GO top-k neighbours (and edge-list
        edges) to the existing nodes; their own embeddings start at zero."""
        from .model import CGIONet

        cfg, net = self._cfg, self._net
        assert cfg is not None and net is not None
        old = list(self._universe)
        universe = old + new
        for g in self._graphs:
            if g.name == "go" and self._go is not None:
                G.attach_go(g, self._go, [x for x in new if not x.startswith(CHEM_PREFIX)], old, k=cfg.go_k,
                            min_sim=cfg.go_min_jaccard, symbols=self._symbols)
        states = []
        for member in self._nets:
            state = member.state_dict()
            emb = state["node_emb"]
            state["node_emb"] = torch.cat([emb, torch.zeros(len(new), emb.shape[1], device=emb.device)])
            states.append(state)
        self._universe = universe
        self._spec.n_nodes = len(universe)
        self._adjs = self._adjacency(universe)
        self._hops = G.hops_to_measured(self._adjs, self._spec.measured_idx, len(universe))
        self._nets = []
        for state in states:
            member = CGIONet(self._spec, self._adjs, self._basis, self._bias, self._logvar, self._device).to(
                self._device)
            member.load_state_dict(state)
            member.eval()
            self._nets.append(member)
        self._net = self._nets[0]
        self._extended += new

    # ------------------------------------------------------------------ data
    def _batch(self, groups: Sequence[GroupInfo], deltas: np.ndarray | None, net: CGIONet | None = None) -> Batch:
        """The tensors of ``groups`` (their targets ``deltas``, zeros without), signals propagated by ``net``."""
        from .train import Batch

        pos = {g: i for i, g in enumerate(self._universe)}
        x = np.zeros((len(groups), len(self._universe)), dtype=np.float32)
        for b, g in enumerate(groups):
            for gene in tokens(g):
                if gene in pos and gene not in self._silent:
                    x[b, pos[gene]] = 1.0
        ctx = [self._ctx.get(g.context, len(self._ctx)) for g in groups]
        cov = [[np.log1p(max(g.dose or 0.0, 0.0)), (g.time or 0.0) / self._time_scale] for g in groups]
        y = deltas if deltas is not None else np.zeros((len(groups), len(self._genes)))
        d = self._device
        xt = torch.as_tensor(x, device=d)
        net = net if net is not None else self._net
        assert net is not None
        return Batch(xt, torch.as_tensor(ctx, dtype=torch.long, device=d),
                     torch.as_tensor(np.asarray(cov, np.float32).reshape(-1, 2), device=d),
                     torch.as_tensor(np.asarray(y, np.float32), device=d), net.signals(xt))

    # ------------------------------------------------------------------ fit
    def fit(self, train: TrainingData, val: TrainingData | None, config: Mapping[str, Any]) -> None:
        """Build graphs from training data only, then train (cross-fitting, or early stopping with
        an optional refit); the steps are the functions of :mod:`.fitting`, run in its order."""
        _ensure_torch()
        if _TORCH_ERROR is not None:
            raise ConfigError(f"model 'cgio' needs torch, which is not importable ({_TORCH_ERROR})",
                              field="model", fix="pip install 'perturbfm-models[cgio]' (torch==2.13.0)")
        from . import fitting as F
        from .train import Curve, seed_everything

        t0 = time.perf_counter()
        cfg = self._cfg = CGIOConfig.parse(config)
        seed_everything(cfg.seed)
        self._device = F.choose_device(cfg.device)
        data = F.collect_fit_data(train, val)
        self._genes = list(train.genes)
        self._gene_pos = {g: i for i, g in enumerate(self._genes)}
        for i, sym in enumerate(getattr(train, "gene_symbols", None) or []):  # --gene-symbol-key
            self._gene_pos.setdefault(sym, i)
        measured = self._fit_universe(train, data.groups)
        self._trained_genes = {x for g in data.groups for x in tokens(g)}
        self._ctx = {c: i for i, c in enumerate(sorted({g.context for g in data.groups}))}
        self._time_scale = F.time_scale(data.groups)
        # residual design: the network learns a correction to a closed-form base (residual.py)
        se2 = F.stacked_se2(train, val) if cfg.denoise else None
        self._profiles = C.context_profiles(train, sorted(self._ctx), rank=cfg.rank, seed=cfg.seed)
        self._transfer = None
        if cfg.context_transfer and len(self._ctx) >= 2:
            self._transfer = C.fit_transfer(self._profiles, data.groups, data.deltas)
            data.transfer = self._transfer
        self._index = R.BaseIndex(data.groups, data.deltas, use_additive=cfg.additive_prior, stack=cfg.stacking,
                                  se2=se2, transfer=self._transfer)
        kinds_fit, target = F.residual_target(self._index, data, cfg.residual)
        self._basis, self._bias, self._logvar = F.output_init(target, cfg.rank)
        self._spec = F.net_spec(cfg, n_nodes=len(self._universe), measured=measured, n_contexts=len(self._ctx),
                                n_graphs=len(self._graphs))
        make = F.net_factory(self._spec, self._adjs, self._basis, self._bias, self._logvar, self._device)
        full = self._batch(data.groups, target, make())
        if cfg.network:
            members = F.train_members(make, full, data, cfg, se2, self._gene_pos, len(self._ctx))
        else:
            members = F.Members([], Curve(), "network off", shrink=F.default_shrink("network off (network=false)"))
        self._nets = members.nets
        self._net = members.nets[0] if members.nets else None
        self._fitted = True
        self._shrink, self._var_scale, self._self_effect = members.shrink, members.var_scale, members.self_effect
        self._fit_groups = data.groups
        self._singles = {(g.genes[0], g.context, g.covariates): d
                         for g, d in zip(data.groups, data.deltas) if len(g.genes) == 1}
        self._diag = F.fit_diagnostics(cfg, n_nodes=len(self._universe), n_measured=len(self._genes),
                                       n_trained_genes=len(self._trained_genes), graphs=self._graphs,
                                       kinds_fit=kinds_fit, index=self._index, members=members)
        self._diag["gates"] = self._gate_summary(full) if self._net is not None else {}
        if self._dropped_graphs:
            self._diag["graphs_dropped"] = self._dropped_graphs
        self._diag["context_transfer"] = (self._transfer.report if self._transfer is not None else
                                          {"applied": False, "reason": "off (context_transfer=false)"
                                           if not cfg.context_transfer else "fewer than 2 training contexts"})
        self._diag["floor"] = ("predicted mean >= 0 (delta >= -control mean): training data non-negative"
                               if cfg.floor and self._profiles.nonnegative else "off")
        self._diag["device"] = str(self._device)
        self._diag["fit_seconds"] = round(time.perf_counter() - t0, 3)

    def _fit_universe(self, train: TrainingData, groups: Sequence[GroupInfo]) -> np.ndarray:
        """The node universe, graphs, normalised adjacencies and hop distances of the fit;
        returns the node index of each measured gene."""
        seeds = list(dict.fromkeys(self._genes + sorted({x for g in groups if is_genetic(g) for x in g.genes})))
        self._go = None
        self._universe, self._graphs = self._build_graphs(train, seeds)
        # non-gene perturbations: isolated identity nodes, never looked up in a graph
        chem = sorted({x for g in groups if not is_genetic(g) for x in tokens(g)} - set(self._universe))
        self._universe = self._universe + chem
        self._extended = []
        self._silent = set()
        self._adjs = self._adjacency(self._universe)
        pos = {g: i for i, g in enumerate(self._universe)}
        measured = np.array([pos[g] for g in self._genes], dtype=np.int64)
        self._hops = G.hops_to_measured(self._adjs, measured, len(self._universe))
        return measured

    def _self_effect_for(self, g: GroupInfo, kind: str) -> tuple[dict[str, float] | None, list[str]]:
        """See :func:`.fitting.self_effect_for`."""
        from .fitting import self_effect_for

        return self_effect_for(self._self_effect, self._gene_pos, g, kind)

    def _gate_summary(self, full: Batch) -> dict[str, dict[str, float]]:
        """Mean gate per graph over the training groups of each context."""
        assert self._net is not None
        with torch.no_grad():
            _, _, gam = self._net(full.x, full.ctx, full.cov, full.sig)
        names = [g.name for g in self._graphs] or ["none"]
        out: dict[str, dict[str, float]] = {}
        for c, i in self._ctx.items():
            sel = (full.ctx == i).cpu().numpy()
            if sel.any():
                m = gam.cpu().numpy()[sel].mean(axis=0)
                out[c] = {n: float(v) for n, v in zip(names, m)}
        return out

    # ------------------------------------------------------------------ predict
    def _gene_notes(self, q: GroupInfo) -> list[str]:
        """Notes on the query's genes: outside the universe, unreachable, beyond K steps."""
        pos = {g: i for i, g in enumerate(self._universe)}
        steps = self._spec.steps if self._spec.use_graphs else 0
        notes: list[str] = []
        if not is_genetic(q):  # a drug or stimulus enters at its own identity node: no gene path to speak of
            unseen = [x for x in q.genes if CHEM_PREFIX + x not in self._trained_genes]
            return [f"{getattr(q, 'kind', 'non-gene')} perturbation {x} was not in the training groups: its identity "
                    "embedding is zero (no graph lookup)" for x in unseen]
        for gene in getattr(q, "target_genes", q.genes):
            i = pos[gene]
            hop = self._hops[i]
            if gene in self._extended:
                notes.append(f"gene {gene} was outside the fitted node universe: attached at predict time "
                             "by its top-k GO neighbours, own embedding zero")
            if not np.isfinite(hop):
                what = ("contributes nothing (its embedding was never trained)" if gene in self._silent
                        else "contributes only through its own learned embedding (it was perturbed in training)")
                notes.append(f"perturbed gene {gene} has no path to any measured gene in any graph: {what}")
            elif hop > steps:
                notes.append(f"perturbed gene {gene} is {int(hop)} hops from the nearest measured gene, beyond "
                             f"the {steps} propagation steps: it acts only through its smoothed embedding")
        return notes

    def predict(self, queries: list[GroupInfo]) -> Prediction:
        """Mean and variance of each query's delta, with notes for every fallback."""
        _ensure_torch()
        require_fitted(self, "_fitted", self.name)
        from .fitting import add_self_effect

        cfg = self._cfg
        assert cfg is not None
        new = sorted({x for q in queries for x in tokens(q)} - set(self._universe))
        if new and self._nets:
            self._extend(new)
        elif new:  # no network: the new genes only need their (unknown) distance for the notes
            self._universe = self._universe + new
            self._extended += new
            self._hops = np.concatenate([self._hops, np.full(len(new), np.inf)])
        net = self._net
        unreachable = {self._universe[i] for i in np.flatnonzero(~np.isfinite(self._hops))}
        self._silent = {g for g in unreachable if g not in self._trained_genes}
        n_genes = len(self._genes)
        if self._nets:
            batch = self._batch(queries, None)
            means, vars_, gams = [], [], []
            with torch.no_grad():
                for member in self._nets:
                    m_, v_, g_ = (t.cpu().numpy().astype(np.float64)
                                  for t in member(batch.x, batch.ctx, batch.cov, batch.sig))
                    means.append(m_)
                    vars_.append(v_)
                    gams.append(g_)
            mean = np.mean(means, axis=0)
            head_var = np.mean(vars_, axis=0)
            spread = np.var(means, axis=0) if len(means) > 1 else np.zeros_like(head_var)
            gam = np.mean(gams, axis=0)
        else:  # network off: the closed-form base, with the training deltas' spread as variance
            mean = np.zeros((len(queries), n_genes))
            head_var = np.tile(np.logaddexp(0.0, self._logvar) + 1e-6, (len(queries), 1))
            spread = np.zeros_like(head_var)
            gam = np.zeros((len(queries), max(len(self._graphs), 1)))
        var = head_var + spread
        base, kinds = self._index.bases(queries, n_genes)
        if cfg.residual or not self._nets:
            for i, k in enumerate(kinds):
                sh = self._shrink[k]
                mean[i] = sh["lambda"] * (base[i] + sh["s"] * mean[i])
                if k in self._var_scale:  # calibrated to the out-of-fold error of this kind
                    var[i] = self._var_scale[k] * head_var[i] + sh["lambda"] ** 2 * sh["s"] ** 2 * spread[i] + 1e-6
                elif self._nets:
                    var[i] = sh["lambda"] ** 2 * max(sh["s"], 1e-3) ** 2 * var[i] + 1e-6
            if self._self_effect:
                mean = add_self_effect(mean, queries, kinds, self._self_effect, self._gene_pos)
        floored = np.zeros(len(queries), dtype=np.int64)
        if cfg.floor and self._profiles is not None and self._profiles.nonnegative:
            for i, q in enumerate(queries):
                if self._profiles.has(q.context):
                    lo = -self._profiles.control_mean(q.context)
                    floored[i] = int((mean[i] < lo).sum())
                    mean[i] = np.maximum(mean[i], lo)
        notes: dict[str, str] = {}
        n_add = 0
        for i, q in enumerate(queries):
            parts: list[str | None] = [*self._gene_notes(q)]
            if q.context not in self._ctx:
                how = ("its control cells' profile" if self._profiles is not None and self._profiles.has(q.context)
                       else "no control cells either")
                parts.append(f"context {q.context!r} has no training groups: represented by {how}"
                             + (" and the learned 'unknown' context embedding" if self._nets else ""))
            if kinds[i].startswith("transfer") and self._transfer is not None and self._transfer.active:
                parts.append(f"transfer to {q.context!r}: {self._transfer.choice} candidate, alpha "
                             f"{self._transfer.alpha:.3f} (chosen leave-one-context-out)")
            if cfg.residual or not self._nets:
                sh = self._shrink[kinds[i]]
                if not sh.get("applied", sh["s"] > 0):
                    parts.append(f"base kind {kinds[i]}: {sh.get('reason', 'network correction off')}")
                w = self._index.weights[kinds[i]]
                if cfg.stacking and not w.get("fitted"):
                    parts.append(f"base weights of kind {kinds[i]} not fitted ({w.get('reason', 'n = 0')})")
            if floored[i]:
                parts.append(f"{int(floored[i])} gene(s) raised to the floor delta = -control mean (a gene cannot "
                             "fall below zero expression)")
            singles = [self._singles.get((g, q.context, q.covariates)) for g in q.genes]
            if cfg.residual and cfg.additive_prior and kinds[i].startswith("additive"):
                n_add += 1
            elif cfg.additive_prior and net is not None and len(q.genes) > 1 and all(
                    s is not None for s in singles):
                sq = [dataclasses.replace(q, perturbation=g) for g in q.genes]  # keeps kind, dose, time
                sb = self._batch(sq, None)
                with torch.no_grad():
                    sm = net(sb.x, sb.ctx, sb.cov, sb.sig)[0].cpu().numpy().astype(np.float64)
                measured = [s for s in singles if s is not None]  # all of them, in this branch
                mean[i] = np.sum(measured, axis=0) + mean[i] - sm.sum(axis=0)
                n_add += 1
            elif cfg.additive_prior and len(q.genes) > 1:
                miss = [g for g, s in zip(q.genes, singles) if s is None]
                parts.append(f"additive prior not applied: single(s) {', '.join(miss)} not measured in this "
                             "context/covariates; predicted by the network alone")
            eff, own = self._self_effect_for(q, kinds[i]) if cfg.residual else (None, [])
            if eff is not None:
                parts.append(f"self-effect {eff['kappa']:+.3f} (median out-of-fold error at the perturbed genes "
                             f"of context {q.context!r}, n = {eff['n']}) added at {', '.join(own)}")
            if not q.genes:
                parts.append("query has no perturbed genes: network output for an empty mask")
            note = join_notes(parts)
            if note:
                notes[q.group_id] = note
        info = {
            "prediction": "CGIO network mean and variance of the pseudobulk delta (Gaussian NLL)",
            "variance": ("variance head × a per-kind, per-gene factor matching the out-of-fold squared error "
                         "of the final prediction, + the spread of the cross-fitted members"
                         if self._var_scale else "variance head (+ member spread), scaled by the gate"),
            "additive_prior": ("combos with all singles measured in the same context/covariates: sum of those "
                               "single deltas + network correction f(combo) − Σ f(single)") if cfg.additive_prior
            else "off",
            "n_groups_with_additive_prior": n_add,
            "residual_base": ({k: kinds.count(k) for k in R.KINDS} if cfg.residual else "off"),
            "base_weights": self._index.weights if cfg.residual else "off",
            "shrinkage": self._shrink,
            "self_effect": (self._self_effect or "none fitted (needs >= 3 out-of-fold groups per context whose "
                            "perturbed genes are measured)") if cfg.residual and cfg.self_effect else "off",
            "unseen_context_policy": "control-cell profile (context transfer) + learned 'unknown' context "
                                     "embedding (noted per group)",
            "context_transfer": self._transfer.report if self._transfer is not None else "off",
            "unreachable_policy": "a perturbed gene with no path to any measured gene is noted per group; "
                                  "if it was also never perturbed in training it contributes nothing",
            "genes_attached_at_predict_time": list(self._extended),
            "graphs": [dict(name=g.name, **g.provenance) for g in self._graphs],
            "query_gates_mean": dict(zip([g.name for g in self._graphs] or ["none"],
                                         map(float, gam.mean(axis=0)))) if len(queries) else {},
        }
        return Prediction(group_ids=[q.group_id for q in queries], mean_delta=mean, var_delta=var,
                          notes=notes, info=info)

    def diagnostics(self) -> dict[str, Any]:
        """Gates per context and graph, graph provenance, training-curve summary, timings."""
        return dict(self._diag)

    @classmethod
    def report_sections(cls, diagnostics: Mapping[str, Any]) -> list[ReportSection]:
        """Graph reliance: the mean gate per context x graph, as a table and a heatmap."""
        gates = diagnostics.get("gates") or diagnostics.get("gates_per_context")
        if not isinstance(gates, dict) or not gates:
            return []
        contexts = sorted(gates)
        graphs = sorted({g for c in contexts if isinstance(gates[c], dict) for g in gates[c]})
        if not graphs:
            return []
        rows: list[list[Any]] = []
        for c in contexts:
            row = gates[c] if isinstance(gates[c], dict) else {}
            rows.append([c] + [float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else ""
                               for v in (row.get(g) for g in graphs)])
        return [ReportSection(title="Graph reliance (CGIO gates)",
                              text="Mean gate per graph over the training groups of each context "
                                   "(0 = graph ignored, 1 = fully used).",
                              headers=["context", *graphs], rows=rows, heatmap=True)]
