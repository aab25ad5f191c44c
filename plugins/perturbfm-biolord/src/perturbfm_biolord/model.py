"""The ``biolord`` model: biolord (``biolord`` 0.0.3) fitted and predicted in its own environment.

Host side only: the environment spec and the parameters; the work is in ``worker.py``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from perturbfm.envs import EnvSpec, IsolatedModel
from perturbfm.options import Bool, ConfigModel, Int, defaults_of
from pydantic import Field

WORKER = str(Path(__file__).with_name("worker.py"))
#: resolved with uv on Python 3.11 with the local CPU torch (biolord 0.0.3 takes the current scvi-tools)
REQUIREMENTS = ["torch==2.13.0", "biolord==0.0.3", "scvi-tools==1.4.2", "anndata==0.12.19", "numpy==2.4.6"]


class BiolordConfig(ConfigModel):
    """biolord's parameters: biolord 0.0.3's own defaults."""

    #: shown in the parameter ledger (parameters.csv) beside every default
    defaults_source: ClassVar[str] = "biolord 0.0.3 package defaults"

    n_latent: Int = Field(128, ge=1, description="free latent dimensions (package default 128)")
    max_epochs: Int | None = Field(None, ge=1, description="epochs; null: scvi-tools' rule "
                                   "min(round(20000 / n_cells * 400), 400) (package default)")
    batch_size: Int = Field(128, ge=1, description="cells per batch (package default 128)")
    early_stopping: Bool = Field(False, description="early stopping (package default off)")
    seed: Int = Field(0, ge=0, description="seed")


class BiolordModel(IsolatedModel):
    """biolord: a seen perturbation transferred to another context / seen covariates."""

    name = "biolord"
    description = ("biolord (biolord 0.0.3, Piran et al. 2024): disentangled attributes (perturbation, context, "
                   "covariates) + free latent; seen perturbations in new contexts; own environment")
    gives_variance = False
    config_model = BiolordConfig
    environment = EnvSpec(name="biolord", requirements=REQUIREMENTS, python="3.11", worker=WORKER)

    def default_config(self) -> dict[str, Any]:
        return defaults_of(BiolordConfig)
