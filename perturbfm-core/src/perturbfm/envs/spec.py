"""What a model's own Python environment is made of (:class:`EnvSpec`), its hash,
and the machine-level package sources added at build time.

The hash covers everything that changes what gets installed: the requirements,
constraints, find-links and extra index URLs the spec names, the Python version and
the protocol/layout version of this module. It does *not* cover the spec's ``name``
(two models with identical specs share one environment), the worker file (it is run
from its path at call time; its content hash goes into each run's provenance) or the
machine-level sources (``$PFM_ENV_FIND_LINKS``, ``$PFM_ENV_EXTRA_INDEX_URLS``, else
``$PIP_FIND_LINKS``): those are applied at build time and recorded in the
environment's ``env.json``, so one spec has one hash on every machine.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from packaging.requirements import InvalidRequirement, Requirement

from perturbfm.errors import ConfigError

#: Version of the environment layout and of the file protocol; part of every spec hash.
LAYOUT_VERSION = 1

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_PYTHON = re.compile(r"^3\.[0-9]{1,2}(\.[0-9]{1,2})?$")


def _pinned(req: Requirement) -> bool:
    """``name==X`` / ``name===X`` (no wildcard), or a direct reference ``name @ url``."""
    if req.url:
        return True
    specs = list(req.specifier)
    return len(specs) == 1 and specs[0].operator in ("==", "===") and not specs[0].version.endswith(".*")


@dataclass(frozen=True)
class EnvSpec:
    """A Python environment a model runs in, created by the harness with ``uv``.

    Attributes:
        name: a label for listings and messages (``scgen``); not part of the hash.
        requirements: the packages to install, each pinned (``scgen==2.1.0``) or a
            direct reference (``pkg @ https://...``), PEP 508 (markers allowed).
            The worker file's imports must be satisfied by these (numpy included).
        python: the Python version (``"3.11"`` or ``"3.11.7"``); a matching local
            interpreter is used (the running one when it matches), never downloaded
            unless ``$PFM_ENV_PYTHON_DOWNLOADS=1``.
        constraints: extra pins for transitive dependencies (``-c`` lines).
        overrides: replacements for what a dependency itself declares (uv's
            ``--override``), for a pinned release whose metadata caps a package below
            what the environment must use (e.g. ``torch==2.13.0`` over cpa-tools 0.8.8's
            ``torch<=2.0.1``). Hashed only when non-empty.
        find_links: directories or URLs of wheels (``--find-links``).
        extra_index_urls: package indexes besides PyPI (``--extra-index-url``).
        worker: path of the stand-alone env-side Python file defining
            ``fit(train, config, state_dir) -> dict`` and
            ``predict(queries, state_dir) -> dict`` (it may import only what the
            environment has, never ``perturbfm``); see ``docs/environments.md``.
    """

    name: str
    requirements: list[str]
    python: str = "3.11"
    constraints: list[str] = field(default_factory=list)
    find_links: list[str] = field(default_factory=list)
    extra_index_urls: list[str] = field(default_factory=list)
    worker: str = ""
    overrides: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        where = f"environment {self.name!r}"
        if not isinstance(self.name, str) or not _NAME.match(self.name):
            raise ConfigError(f"environment name {self.name!r} is not a plain name", field="EnvSpec.name",
                              fix="use letters, digits, '.', '_' or '-', e.g. EnvSpec(name='scgen', ...)")
        for attr in ("requirements", "constraints", "find_links", "extra_index_urls", "overrides"):
            value = getattr(self, attr)
            if isinstance(value, str) or not all(isinstance(v, str) and v.strip() for v in value):
                raise ConfigError(f"{where}: EnvSpec.{attr} must be a list of non-empty strings, got {value!r}",
                                  field=f"EnvSpec.{attr}", fix=f"e.g. {attr}=['...']")
            object.__setattr__(self, attr, [v.strip() for v in value])
        if not self.requirements:
            raise ConfigError(f"{where}: EnvSpec.requirements is empty", field="EnvSpec.requirements",
                              fix="list the pinned packages the worker imports, e.g. ['numpy==2.2.6']")
        for attr in ("requirements", "constraints", "overrides"):
            for line in getattr(self, attr):
                try:
                    req = Requirement(line)
                except InvalidRequirement as exc:
                    raise ConfigError(f"{where}: {attr} entry {line!r} is not a PEP 508 requirement ({exc})",
                                      field=f"EnvSpec.{attr}", fix="write it as name==version") from None
                if attr == "requirements" and not _pinned(req):
                    raise ConfigError(f"{where}: requirement {line!r} is not pinned", field="EnvSpec.requirements",
                                      fix=f"pin an exact version, e.g. {req.name}==X.Y.Z (the environment is "
                                      "keyed by its specification, so it must name what gets installed)")
        if not isinstance(self.python, str) or not _PYTHON.match(self.python):
            raise ConfigError(f"{where}: EnvSpec.python {self.python!r} is not a Python version",
                              field="EnvSpec.python", fix="e.g. python='3.11'")
        if not isinstance(self.worker, str) or not self.worker.strip():
            raise ConfigError(f"{where}: EnvSpec.worker is not set", field="EnvSpec.worker",
                              fix="worker=str(Path(__file__).with_name('worker.py')) (the env-side file)")

    def content(self) -> dict[str, Any]:
        """What the hash covers (sorted lists: order does not change what is installed)."""
        return {
            "layout": LAYOUT_VERSION,
            "python": self.python,
            "requirements": sorted(self.requirements),
            "constraints": sorted(self.constraints),
            "find_links": sorted(self.find_links),
            "extra_index_urls": sorted(self.extra_index_urls),
            # only when set, so specs without overrides keep their hashes
            **({"overrides": sorted(self.overrides)} if self.overrides else {}),
        }

    def spec_hash(self) -> str:
        """The sha256 of :meth:`content`: the environment's directory name under ``<store>/envs/``."""
        body = json.dumps(self.content(), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        return hashlib.sha256(body.encode("utf-8")).hexdigest()

    def worker_path(self) -> Path:
        """The worker file; a clear error when it does not exist."""
        path = Path(self.worker).expanduser()
        if not path.is_file():
            raise ConfigError(f"environment {self.name!r}: the worker file {path} does not exist",
                              file=str(path), field="EnvSpec.worker",
                              fix="point EnvSpec.worker at the env-side Python file shipped with the model")
        return path.resolve()

    def worker_sha256(self) -> str:
        return hashlib.sha256(self.worker_path().read_bytes()).hexdigest()


def _split(value: str) -> list[str]:
    return value.split()


def machine_sources() -> dict[str, Any]:
    """Package sources of this machine applied to every build (not hashed, recorded).

    ``$PFM_ENV_FIND_LINKS`` (else ``$PIP_FIND_LINKS``) and ``$PFM_ENV_EXTRA_INDEX_URLS``,
    each a whitespace-separated list (as pip reads ``$PIP_FIND_LINKS``)."""
    out: dict[str, Any] = {"find_links": [], "extra_index_urls": [], "from": []}
    for var in ("PFM_ENV_FIND_LINKS", "PIP_FIND_LINKS"):
        if os.environ.get(var, "").strip():
            out["find_links"] = _split(os.environ[var])
            out["from"].append(var)
            break
    if os.environ.get("PFM_ENV_EXTRA_INDEX_URLS", "").strip():
        out["extra_index_urls"] = _split(os.environ["PFM_ENV_EXTRA_INDEX_URLS"])
        out["from"].append("PFM_ENV_EXTRA_INDEX_URLS")
    return out
