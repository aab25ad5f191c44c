"""Pinning plugins: check that the distributions a study needs are installed,
loaded and of the required versions.

Example::

    from perturbfm.plugins import get_registry
    from perturbfm.plugin_kit.pins import check_requirements

    check_requirements(get_registry(), {"perturbfm-models": ">=0.1", "pfm-example-model": "==0.3.0"})
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from importlib import metadata
from typing import Any

from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.version import InvalidVersion, Version

from perturbfm.errors import PluginError


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _specifier(spec: str) -> SpecifierSet:
    text = str(spec).strip()
    if text and text[0].isdigit():  # a bare version means exactly that version
        text = f"=={text}"
    return SpecifierSet(text)


def check_requirements(registry: Any, requirements: Mapping[str, str]) -> dict[str, str]:
    """Check pinned distributions against what ``registry`` loaded.

    Args:
        registry: a :class:`perturbfm.plugins.PluginRegistry`.
        requirements: distribution name -> version specifier (``">=0.1"``,
            ``"==0.3.0"``, ``">=1,<2"``; a bare ``"0.3.0"`` means ``"==0.3.0"``;
            ``""`` means any version). Names compare PEP 503-normalised.

    Returns:
        distribution -> the version found, for every requirement.

    Raises:
        PluginError: listing *every* distribution that is missing, failed to
            load, is disabled, or whose version does not satisfy its specifier
            (found vs required), and every invalid specifier.

    A distribution with a ``perturbfm`` entry point is judged by the registry (a
    plugin that failed to load or is disabled counts as unusable even though it
    is installed); any other distribution by its installed metadata.
    """
    plugins: dict[str, list[Any]] = {}
    for info in getattr(registry, "plugins", []):
        plugins.setdefault(_norm(info.distribution), []).append(info)
    problems: list[tuple[str, str, str, str]] = []  # (dist, found, required, problem)
    found_versions: dict[str, str] = {}
    for dist, spec in requirements.items():
        required = str(spec).strip() or "any"
        try:
            specifier = _specifier(spec)
        except InvalidSpecifier:
            problems.append((dist, "-", required, "invalid version specifier"))
            continue
        infos = plugins.get(_norm(dist))
        if infos:
            found = infos[0].version
            unusable = [i for i in infos if i.error]
            if unusable:
                problems.append((dist, found, required, f"installed but not usable: {unusable[0].error}"))
                continue
        else:
            try:
                found = metadata.version(dist)
            except metadata.PackageNotFoundError:
                problems.append((dist, "not installed", required, "missing"))
                continue
        try:
            ok = specifier.contains(Version(found), prereleases=True)
        except InvalidVersion:
            ok = False
        if not ok:
            problems.append((dist, found, required, "version mismatch"))
            continue
        found_versions[dist] = found
    if problems:
        rows = "\n".join(f"  {d:<28} {f:<16} {r:<16} {p}" for d, f, r, p in problems)
        raise PluginError(
            f"{len(problems)} pinned distribution(s) missing or mismatched\n"
            f"  {'distribution':<28} {'found':<16} {'required':<16} problem\n{rows}",
            field=problems[0][0],
            fix="install the pinned versions (pip install 'name==version'), or update the pins",
        )
    return found_versions
