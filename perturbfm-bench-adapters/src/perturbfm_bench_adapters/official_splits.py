"""Import official splits: PerturBench split CSVs, GEARS split pickles and split
columns in ``.obs`` (scPerturBench style).

Each becomes a :class:`perturbfm.splits.Split` with generator ``import:<format>``
and a ``source`` naming the file and its SHA-256 (or the column and the dataset
hash). Cell-level files are mapped to groups; a group whose cells straddle roles
is refused, named. GEARS pickles are read with an unpickler that resolves no
global at all, so only plain containers and scalars can come back; the work
they cause is bounded by their size (a small pickle that references one list
millions of times is refused before anything is expanded). Every file is
checked to be a regular file before it is opened (a FIFO never blocks).
"""

from __future__ import annotations

import csv
import io
import os
import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from perturbfm.canonical.labels import split_combo
from perturbfm.canonical.obs import head
from perturbfm.dataset import CONTROL_COL, GROUP_COL, PERT_COL, canonical_perturbation, ensure_group_column
from perturbfm.errors import SplitIntegrityError
from perturbfm.fsio import read_regular_file
from perturbfm.hashing import sha256_bytes, sha256_file
from perturbfm.splits import Split
from perturbfm.store import StoredDataset

FORMATS = ("perturbench-csv", "gears-pickle", "obs-column")
_ROLE_ALIASES = {"train": "train", "training": "train", "val": "val", "valid": "val", "validation": "val",
                 "test": "test", "testing": "test", "calibration": "calibration", "calib": "calibration"}
_PLAIN = (dict, list, tuple, str, int, float, bool, type(None))
#: Largest split file read (official split files are a few MB).
MAX_SPLIT_FILE_BYTES = 512 << 20
#: A pickle may expand to at most this many items and label characters per byte of
#: file (plus a floor): a plain split pickle stores each item once, so it is far below.
ITEMS_PER_BYTE, CHARS_PER_BYTE, EXPANSION_FLOOR = 2, 16, 100_000
_FILE_FIX = "pass the path of the split file (a regular file)"


def read_split_file(path: str | Path, what: str) -> bytes:
    """The bytes of split file ``path``; missing, a directory, a FIFO, a device
    or a file over :data:`MAX_SPLIT_FILE_BYTES` is a clean error."""
    return read_regular_file(path, what=what, max_bytes=MAX_SPLIT_FILE_BYTES, error=SplitIntegrityError,
                             fix=_FILE_FIX)


class RefusingUnpickler(pickle.Unpickler):
    """Resolves no global (class or function), so no code can run while loading:
    only dict/list/tuple/str/int/float/bool/None survive."""

    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"refused to load {module}.{name}: split pickles may hold only plain "
                                     "dicts, lists, strings and numbers")

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError("refused a persistent id")


def safe_load_pickle(path: str | Path) -> Any:
    """Load a pickle of plain data (see :class:`RefusingUnpickler`), bounded in work by its size."""
    data = read_split_file(path, "the pickle")
    try:
        obj = RefusingUnpickler(io.BytesIO(data)).load()
    except Exception as exc:  # malformed or malicious: every failure is a refusal
        raise SplitIntegrityError(f"refused to load the pickle: {exc}", file=str(path), field="pickle",
                                  fix="export the split as a plain dict of lists of condition names") from exc
    _check_plain(obj, str(path), len(data))
    return obj


def _check_plain(obj: Any, file: str, n_bytes: int = 0) -> None:
    """Refuse anything but plain containers and scalars, and a structure whose
    expansion (items and characters counted with repetition, as the import would
    visit them) exceeds a bound proportional to the file's size. Shared objects
    are sized once (memoised by identity), so checking costs time linear in the file."""
    max_items = EXPANSION_FLOOR + ITEMS_PER_BYTE * n_bytes
    max_chars = EXPANSION_FLOOR + CHARS_PER_BYTE * n_bytes
    sizes: dict[int, tuple[int, int]] = {}
    keep: list[Any] = []  # ids stay valid while their objects are alive
    stack: list[tuple[Any, bool]] = [(obj, False)]
    while stack:
        x, expanded = stack.pop()
        if id(x) in sizes and not expanded:
            continue
        if not isinstance(x, _PLAIN):
            raise SplitIntegrityError(f"the pickle holds a {type(x).__name__}", file=file, field="pickle",
                                      fix="only plain dicts, lists, strings and numbers are accepted")
        children = ([*x.keys(), *x.values()] if isinstance(x, dict) else list(x) if isinstance(x, (list, tuple))
                    else [])
        if not expanded and children:
            stack.append((x, True))
            stack.extend((c, False) for c in children if id(c) not in sizes)
            continue
        items, chars = 1, len(x) if isinstance(x, str) else 0
        for c in children:
            ci, cc = sizes[id(c)]
            items, chars = items + ci, chars + cc
        if items > max_items or chars > max_chars:
            raise SplitIntegrityError(
                f"the pickle ({n_bytes} bytes) expands to over {min(items, max_items):,} items or "
                f"{min(chars, max_chars):,} characters (shared references repeated): refused before expanding it",
                file=file, field="pickle",
                fix="export the split as a plain dict of lists of condition names, each listed once")
        sizes[id(x)] = (items, chars)
        keep.append(x)


def _conditions(value: Any, file: str, field: str) -> list[str]:
    """A list of condition names (strings), or a clean error naming ``field``."""
    if not isinstance(value, (list, tuple)):
        raise SplitIntegrityError(f"{field} is a {type(value).__name__}, not a list of condition names", file=file,
                                  field=field, fix="each key must map to a list of condition names (strings)")
    bad = next((v for v in value if not isinstance(v, str)), None)
    if bad is not None:
        raise SplitIntegrityError(f"{field} holds a {type(bad).__name__}, not a condition name", file=file,
                                  field=field, fix="each key must map to a list of condition names (strings)")
    return list(value)


def _role(value: Any, file: str, field: str) -> str:
    role = _ROLE_ALIASES.get(str(value).strip().lower())
    if role is None:
        raise SplitIntegrityError(f"unknown split value {value!r}", file=file, field=field,
                                  fix="use train, val or test (calibration also accepted)")
    return role


def _dataset_obs(stored: StoredDataset) -> pd.DataFrame:
    adata = stored.load(backed=True)
    try:
        ensure_group_column(adata)
        return adata.obs.copy()
    finally:
        if adata.isbacked:
            adata.file.close()


def cells_to_groups(obs: pd.DataFrame, cell_roles: pd.Series, file: str, field: str) -> dict[str, str]:
    """Group roles from cell roles (index: obs names, aligned with ``obs``);
    control cells are ignored, a group whose cells have several roles is refused."""
    pert = ~obs[CONTROL_COL].to_numpy(dtype=bool)
    df = pd.DataFrame({"group": obs[GROUP_COL].astype(str).to_numpy()[pert],
                       "role": cell_roles.to_numpy()[pert]})
    roles = df.groupby("group")["role"].agg(lambda s: sorted(set(s)))
    straddle = {g: r for g, r in roles.items() if len(r) > 1}
    if straddle:
        desc = "; ".join(f"{g} ({'/'.join(r)})" for g, r in list(sorted(straddle.items()))[:10])
        raise SplitIntegrityError(
            f"{len(straddle)} group(s) have cells in several roles: {desc}", file=file, field=field,
            fix="PerturbFM splits assign whole groups; split by perturbation group, not by cell")
    return {g: r[0] for g, r in roles.items()}


def from_perturbench_csv(stored: StoredDataset, path: str | Path) -> tuple[dict[str, str], dict[str, Any]]:
    """Assignments from a headerless ``obs_name,split`` CSV covering every cell."""
    file = os.path.abspath(path)
    obs = _dataset_obs(stored)
    names: dict[str, str] = {}
    raw = read_split_file(file, "the split CSV")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise SplitIntegrityError(f"the split CSV is not UTF-8 text: {exc}", file=file, field="csv",
                                  fix="save the file as UTF-8 text with one 'obs_name,split' per line") from None
    if "\x00" in text:
        raise SplitIntegrityError("the split CSV holds NUL bytes (a binary file?)", file=file, field="csv",
                                  fix="pass the split CSV as text with one 'obs_name,split' per line")
    try:
        rows = list(csv.reader(io.StringIO(text, newline="")))
    except csv.Error as exc:
        raise SplitIntegrityError(f"the split CSV cannot be parsed: {exc}", file=file, field="csv",
                                  fix="write one 'obs_name,split' per line, no header") from None
    for i, row in enumerate(rows):
        if not row or not "".join(row).strip():
            continue
        if len(row) < 2:
            raise SplitIntegrityError(f"line {i + 1} is not 'obs_name,split'", file=file, field="csv",
                                      fix="write one 'obs_name,split' per line, no header")
        name, value = row[0].strip(), row[1].strip()
        if i == 0 and value.lower() == "split" and name not in obs.index:
            continue  # a header line
        role = _role(value, file, f"line {i + 1}")
        if names.setdefault(name, role) != role:
            raise SplitIntegrityError(f"cell {name!r} is listed with two roles", file=file, field="csv",
                                      fix="list each cell once")
    unknown = sorted(set(names) - set(obs.index))
    if unknown:
        raise SplitIntegrityError(f"{len(unknown)} cell name(s) are not in the dataset: {head(unknown, 6)}",
                                  file=file, field="obs_name",
                                  fix="import the split for the dataset it was made for (same cells, same names)")
    missing = [n for n in obs.index if n not in names]
    if missing:
        raise SplitIntegrityError(f"{len(missing)} of {len(obs)} dataset cells are not in the CSV: {head(missing, 6)}",
                                  file=file, field="obs_name", fix="the split file must cover every cell")
    roles = pd.Series([names[n] for n in obs.index], index=obs.index)
    return cells_to_groups(obs, roles, file, "split"), {"path": file, "sha256": sha256_bytes(raw)}


def from_obs_column(stored: StoredDataset, column: str) -> tuple[dict[str, str], dict[str, Any]]:
    """Assignments from a split column of the dataset's ``.obs`` (train/val/test)."""
    obs = _dataset_obs(stored)
    where = f"dataset {stored.hash[:12]} obs"
    if column not in obs.columns:
        raise SplitIntegrityError(f"the dataset has no obs column {column!r}", file=where, field=column,
                                  fix=f"use one of: {head(obs.columns, 30)}")
    pert = ~obs[CONTROL_COL].to_numpy(dtype=bool)
    raw = obs[column]
    if raw[pert].isna().any():
        raise SplitIntegrityError(f"{int(raw[pert].isna().sum())} perturbed cells have no value in {column!r}",
                                  file=where, field=column, fix="every perturbed cell needs train/val/test")
    lookup = {v: _role(v, where, column) for v in pd.unique(raw[pert].astype(str))}
    roles = pd.Series(np.where(pert, raw.astype(str).map(lambda v: lookup.get(v, "")), ""), index=obs.index)
    return cells_to_groups(obs, roles, where, column), {"column": column, "dataset": stored.hash}


def _gears_perturbation(condition: str) -> str:
    return canonical_perturbation([g for g in split_combo(str(condition), "+") if g.strip() != "ctrl"])


def from_gears_pickle(
    stored: StoredDataset, path: str | Path, subgroup: str | Path | None = None
) -> tuple[dict[str, str], dict[str, Any], dict[str, str] | None, dict[str, bool] | None]:
    """Assignments from a GEARS ``{"train": [...], "val": [...], "test": [...]}`` pickle
    of conditions (``A+ctrl``, ``A+B``); every group of a condition's perturbation
    (in every context) gets its role. ``subgroup`` (GEARS ``*_subgroup.pkl``) adds labels."""
    file = os.path.abspath(path)
    data = safe_load_pickle(file)
    if not isinstance(data, dict) or not all(isinstance(v, (list, tuple)) for v in data.values()):
        raise SplitIntegrityError("the pickle is not a dict of condition lists", file=file, field="pickle",
                                  fix="pass GEARS' set2conditions pickle ({'train': [...], 'test': [...]})")
    obs = _dataset_obs(stored)
    by_pert: dict[str, list[str]] = {}
    for g, p in obs.loc[~obs[CONTROL_COL].to_numpy(dtype=bool), [GROUP_COL, PERT_COL]].drop_duplicates() \
            .astype(str).itertuples(index=False):
        by_pert.setdefault(p, []).append(g)
    assignments: dict[str, str] = {}
    unknown = []
    for key, conds in data.items():
        role = _role(key, file, f"key {key!r}")
        for cond in _conditions(conds, file, f"key {key!r}"):
            pert = _gears_perturbation(cond)
            if pert == "control":
                continue
            if pert not in by_pert:
                unknown.append(str(cond))
                continue
            for g in by_pert[pert]:
                if assignments.setdefault(g, role) != role:
                    raise SplitIntegrityError(f"condition {cond!r} is listed in two roles", file=file,
                                              field=str(key), fix="list each condition once")
    if unknown:
        raise SplitIntegrityError(f"{len(unknown)} condition(s) match no group of the dataset: {head(unknown, 6)}",
                                  file=file, field="conditions", fix="import the split for the dataset it was made for")
    missing = sorted(set(g for gs in by_pert.values() for g in gs) - set(assignments))
    if missing:
        raise SplitIntegrityError(f"{len(missing)} group(s) of the dataset are in no role: {head(missing, 6)}",
                                  file=file, field="conditions",
                                  fix="the pickle must list every condition (GEARS drops perturbations without "
                                      "GO annotation: import with the same filtering)")
    source: dict[str, Any] = {"path": file, "sha256": sha256_file(file)}
    labels = ood = None
    if subgroup is not None:
        sub_file = os.path.abspath(subgroup)
        sub = safe_load_pickle(sub_file)
        labels = {}
        for part in (sub.values() if isinstance(sub, dict) else []):
            for label, conds in (part.items() if isinstance(part, Mapping) else []):
                for cond in _conditions(conds, sub_file, f"subgroup {label!r}"):
                    for g in by_pert.get(_gears_perturbation(cond), []):
                        labels[g] = str(label)
        ood = {g: lab != "combo_seen2" for g, lab in labels.items() if assignments.get(g) == "test"}
        source["subgroup"] = {"path": sub_file, "sha256": sha256_file(sub_file)}
    return assignments, source, labels, ood


def import_split(stored: StoredDataset, fmt: str, ref: str, *, seed_name: str | None = None,
                 subgroup: str | None = None) -> Split:
    """Build the :class:`Split` for an official split (not yet stored)."""
    labels = ood = None
    if fmt == "perturbench-csv":
        assignments, source = from_perturbench_csv(stored, ref)
    elif fmt == "gears-pickle":
        assignments, source, labels, ood = from_gears_pickle(stored, ref, subgroup)
    elif fmt == "obs-column":
        assignments, source = from_obs_column(stored, ref)
    else:
        raise SplitIntegrityError(f"unknown split format {fmt!r}", field="format", fix=f"use one of {FORMATS}")
    counts = {r: sum(v == r for v in assignments.values()) for r in ("train", "val", "test", "calibration")}
    params: dict[str, Any] = {"format": fmt}
    if seed_name:
        params["seed_name"] = seed_name
    notes = f"official split imported from {fmt} ({', '.join(f'{k} {v}' for k, v in counts.items() if v)} groups)"
    split = Split(dataset=stored.hash, generator=f"import:{fmt}", params=params, seed=None,
                  assignments=assignments, ood=ood, labels=labels, source=source, notes=notes)
    split.validate()
    return split
