"""The plugin kit: a home for third-party PerturbFM plugins.

* :func:`generate_plugin` (``pfm-bench plugins new NAME --kind ...``) writes a
  ready-to-install plugin package: ``pyproject.toml`` with the entry point in
  group ``perturbfm``, a ``src/`` layout, a minimal working implementation of
  the chosen kind, a test module subclassing the matching conformance suite,
  and a README.
* :func:`check_requirements` (in :mod:`perturbfm.plugin_kit.pins`) checks that
  the plugins a study pins are installed, loaded and of the right versions.
"""

from __future__ import annotations

from perturbfm.plugin_kit.generator import KINDS, GeneratedPlugin, generate_plugin, plugin_names
from perturbfm.plugin_kit.pins import check_requirements

__all__ = ["KINDS", "GeneratedPlugin", "check_requirements", "generate_plugin", "plugin_names"]
