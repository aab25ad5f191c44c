"""The ``scgen`` model: scGen (``scgen`` 2.1.0) fitted and predicted in its own environment.

Host side only: the environment spec and the parameters; the work is in ``worker.py``
(run by the harness in the environment through the file protocol).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from perturbfm.envs import EnvSpec, IsolatedModel
from perturbfm.options import Bool, ConfigModel, Float, Int, defaults_of
from pydantic import Field

WORKER = str(Path(__file__).with_name("worker.py"))

#: what the environment installs (tried and resolved on Python 3.11 with the local CPU torch; see README)
REQUIREMENTS = ["torch==2.13.0", "scgen==2.1.0", "scvi-tools==0.19.0", "anndata==0.9.2", "numpy==1.26.4",
                "torchmetrics==0.11.4", "requests==2.34.2"]
#: scgen 2.1.0 needs scvi-tools 0.19 (scvi.module.base.LossRecorder and scvi._compat went in 0.20), which
#: needs the anndata/jax/lightning/torchmetrics of its time; see the README for every version tried
CONSTRAINTS = ["jax<0.4.24", "jaxlib<0.4.24", "scipy<1.13", "pandas<2.2", "pyarrow<15", "setuptools<81"]


class ScgenConfig(ConfigModel):
    """scGen's parameters; defaults are the authors' (SCGEN() and the scGen tutorial's train())."""

    #: shown in the parameter ledger (parameters.csv) beside every default
    defaults_source: ClassVar[str] = "authors' published defaults (SCGEN() and the scGen tutorial's train())"

    n_hidden: Int = Field(800, ge=1, description="hidden units per layer (authors' default 800)")
    n_latent: Int = Field(100, ge=1, description="latent dimensions (authors' default 100)")
    n_layers: Int = Field(2, ge=1, description="encoder/decoder layers (authors' default 2)")
    dropout_rate: Float = Field(0.2, ge=0.0, lt=1.0, description="dropout (authors' default 0.2)")
    max_epochs: Int = Field(100, ge=1, description="training epochs (authors' tutorial: 100)")
    batch_size: Int = Field(32, ge=1, description="cells per batch (authors' tutorial: 32)")
    early_stopping: Bool = Field(True, description="early stopping on scvi's held-out cells (tutorial: on)")
    early_stopping_patience: Int = Field(25, ge=1, description="early-stopping patience (tutorial: 25)")
    seed: Int = Field(0, ge=0, description="seed of initialisation, data order and scGen's cell sampling")


class ScgenModel(IsolatedModel):
    """scGen: a perturbation seen in other contexts, transferred to a new context by latent arithmetic."""

    name = "scgen"
    description = ("scGen (scgen 2.1.0, Lotfollahi et al. 2019): VAE latent arithmetic, transfers a perturbation "
                   "seen in other contexts to a new context; own environment")
    gives_variance = False
    config_model = ScgenConfig
    environment = EnvSpec(name="scgen", requirements=REQUIREMENTS, constraints=CONSTRAINTS, python="3.11",
                          worker=WORKER)

    def default_config(self) -> dict[str, Any]:
        return defaults_of(ScgenConfig)
