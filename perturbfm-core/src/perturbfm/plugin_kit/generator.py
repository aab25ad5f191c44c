"""``pfm-bench plugins new``: generate a third-party plugin package.

The generated package installs with ``pip install .``, registers through the
entry-point group ``perturbfm`` and passes the matching conformance suite of
:mod:`perturbfm.testing.conformance` out of the box. Templates live in
``perturbfm/plugin_kit/templates/`` (package data) and are filled with
:class:`string.Template` (``${name}`` placeholders).
"""

from __future__ import annotations

import keyword
import os
import re
import shutil
import sys
import tempfile
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from string import Template

from perturbfm import __version__
from perturbfm.errors import PerturbFMError


@dataclass(frozen=True)
class KindSpec:
    """How one plugin kind maps onto files, classes, hooks and suites."""

    module: str  #: implementation module inside the package
    class_suffix: str  #: appended to the CamelCase package name
    hook: str  #: the ``pfm_register_*`` hook
    suite: str  #: conformance suite class in perturbfm.testing.conformance
    suite_attr: str  #: the suite's class attribute naming the implementation
    registry_kind: str  #: the kind in :data:`perturbfm.interfaces.PLUGIN_KINDS`


KINDS: dict[str, KindSpec] = {
    "model": KindSpec("model", "Model", "pfm_register_models", "ModelConformance", "model_class", "model"),
    "metric-panel": KindSpec("panel", "Panel", "pfm_register_metric_panels", "MetricPanelConformance",
                             "panel_class", "metric_panel"),
    "adapter": KindSpec("adapter", "Adapter", "pfm_register_dataset_adapters", "DatasetAdapterConformance",
                        "adapter_class", "dataset_adapter"),
    "split": KindSpec("generator", "SplitGenerator", "pfm_register_split_generators", "SplitGeneratorConformance",
                      "generator_class", "split_generator"),
}

#: PEP 508 distribution names: ASCII letters, digits, ``.``, ``_``, ``-``; start and end alphanumeric.
_DIST_NAME = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?$")
_RESERVED = {"perturbfm", "pfm", "perturbfm-core", "perturbfm-metrics", "perturbfm-models",
             "perturbfm-bench-adapters"}


@dataclass(frozen=True)
class PluginNames:
    """Every name derived from the requested distribution name."""

    dist: str  #: distribution name as given (``my-model``)
    normalized: str  #: PEP 503 normalised (``my-model``); also the registered and entry-point name
    module: str  #: import package (``my_model``)
    class_name: str  #: implementation class (``MyModelModel``)


@dataclass(frozen=True)
class GeneratedPlugin:
    """What :func:`generate_plugin` wrote."""

    path: Path
    names: PluginNames
    kind: str
    files: list[Path]


def normalize_dist(name: str) -> str:
    """PEP 503 normalised distribution name (lower case, runs of ``-_.`` -> ``-``)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def plugin_names(name: str, kind: str) -> PluginNames:
    """Validate ``name`` as a new plugin's distribution name and derive the others.

    Raises:
        PerturbFMError: the name is not a valid distribution name, would give an
            unusable import name (keyword, leading digit, standard-library or
            ``perturbfm`` module), or ``kind`` is unknown.
    """
    if kind not in KINDS:
        raise PerturbFMError(f"unknown plugin kind {kind!r}", field="kind", fix=f"use one of: {', '.join(KINDS)}")
    if not isinstance(name, str) or not _DIST_NAME.match(name):
        raise PerturbFMError(
            f"{name!r} is not a valid distribution name", field="NAME",
            fix="use ASCII letters, digits, '-', '_' or '.', starting and ending with a letter or digit "
            "(e.g. pfm-my-model)",
        )
    normalized = normalize_dist(name)
    module = normalized.replace("-", "_")
    problem = None
    if not module.isidentifier() or module[0].isdigit():
        problem = f"its import name {module!r} would start with a digit"
    elif keyword.iskeyword(module) or keyword.issoftkeyword(module):
        problem = f"its import name {module!r} is a Python keyword"
    elif module in sys.stdlib_module_names or module in sys.builtin_module_names:
        problem = f"its import name {module!r} would shadow the standard-library module"
    elif normalized in _RESERVED or module.startswith("perturbfm"):
        problem = "it is reserved for PerturbFM's own packages"
    if problem:
        raise PerturbFMError(f"cannot use {name!r} as a plugin name: {problem}", field="NAME",
                             fix="choose another name, e.g. pfm-<your-name>")
    camel = "".join(part[:1].upper() + part[1:] for part in module.split("_") if part)
    return PluginNames(dist=name, normalized=normalized, module=module, class_name=camel + KINDS[kind].class_suffix)


def _template(*parts: str) -> str:
    return resources.files("perturbfm.plugin_kit").joinpath("templates", *parts).read_text(encoding="utf-8")


def _render(text: str, values: dict[str, str]) -> str:
    return Template(text).substitute(values)


def generate_plugin(name: str, kind: str, dest: str | os.PathLike[str] = ".") -> GeneratedPlugin:
    """Write a new plugin package ``dest/<name>/`` of ``kind``.

    The package is written to a hidden temporary directory beside the target and
    renamed into place at the end, so a failure leaves nothing behind.

    Args:
        name: distribution name (e.g. ``pfm-my-model``); also the registered name.
        kind: ``model``, ``metric-panel``, ``adapter`` or ``split``.
        dest: directory in which to create the package directory.

    Raises:
        PerturbFMError: invalid name or kind, or ``dest/<name>`` already exists.
    """
    names = plugin_names(name, kind)
    spec = KINDS[kind]
    dest_dir = Path(dest).expanduser().resolve()
    target = dest_dir / name
    if target.exists() or target.is_symlink():
        raise PerturbFMError(f"{target} already exists; refusing to overwrite it", file=str(target),
                             field="NAME", fix="choose another name or --dest, or remove that directory first")
    if dest_dir.exists() and not dest_dir.is_dir():
        raise PerturbFMError(f"--dest {dest_dir} is not a directory", file=str(dest_dir), field="--dest",
                             fix="pass a directory")
    core_major_minor = ".".join(__version__.split(".")[:2])
    values = {
        "dist": names.dist,
        "normalized": names.normalized,
        "module": names.module,
        "class_name": names.class_name,
        "kind": kind,
        "impl_module": spec.module,
        "hook": spec.hook,
        "suite": spec.suite,
        "suite_attr": spec.suite_attr,
        "registry_kind": spec.registry_kind,
        "core_requirement": f"perturbfm-core>={core_major_minor}",
    }
    layout = {
        "pyproject.toml": _template("common", "pyproject.toml.tmpl"),
        "README.md": _template("common", "README.md.tmpl") + _template(kind, "README.md.tmpl"),
        f"src/{names.module}/__init__.py": _template("common", "__init__.py.tmpl"),
        f"src/{names.module}/plugin.py": _template("common", "plugin.py.tmpl"),
        f"src/{names.module}/py.typed": "",
        f"src/{names.module}/{spec.module}.py": _template(kind, "impl.py.tmpl"),
        f"tests/test_{names.module}.py": _template(kind, "test.py.tmpl"),
    }
    dest_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{names.normalized}.", suffix=".tmp", dir=dest_dir))
    written: list[Path] = []
    try:
        for rel, text in layout.items():
            path = tmp / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(_render(text, values), encoding="utf-8")
            written.append(target / rel)
        try:
            os.rename(tmp, target)  # fails if a concurrent writer created target meanwhile
        except OSError as exc:
            raise PerturbFMError(f"{target} already exists; refusing to overwrite it", file=str(target),
                                 field="NAME", fix="choose another name or --dest") from exc
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return GeneratedPlugin(path=target, names=names, kind=kind, files=written)
