"""The ``cpa`` model: CPA (``cpa-tools`` 0.8.8) fitted and predicted in its own environment.

Host side only: the environment spec and the parameters; the work is in ``worker.py``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from perturbfm.envs import EnvSpec, IsolatedModel
from perturbfm.options import Bool, ConfigModel, Float, Int, defaults_of
from pydantic import Field

WORKER = str(Path(__file__).with_name("worker.py"))
#: cpa-tools 0.8.8 declares torch<=2.0.1, torchaudio<=2.0.1 and setuptools 70.0.x; torch 2.13.0 (the
#: project's CPU build) is put over them with uv overrides, torchaudio (never imported by cpa) is dropped.
REQUIREMENTS = ["torch==2.13.0", "cpa-tools==0.8.8", "scvi-tools==0.20.3", "anndata==0.9.2", "numpy==1.23.5",
                "pyarrow==14.0.2"]
OVERRIDES = ["torch==2.13.0", 'torchaudio; python_version < "0"', "setuptools==70.0.0"]


class CpaConfig(ConfigModel):
    """CPA's parameters: cpa-tools 0.8.8's defaults and the authors' tutorial training budget."""

    #: shown in the parameter ledger (parameters.csv) beside every default
    defaults_source: ClassVar[str] = "cpa-tools 0.8.8 package defaults and the authors' tutorial training budget; recon_loss gauss for log-normalised data"

    n_latent: Int = Field(128, ge=1, description="latent dimensions (package default 128)")
    recon_loss: str = Field("gauss", description="reconstruction loss: gauss for log-normalised data (package "
                            "default nb needs counts)")
    doser_type: str = Field("logsigm", description="dose-response curve (package default logsigm)")
    n_hidden_encoder: Int = Field(256, ge=1, description="encoder width (package default 256)")
    n_layers_encoder: Int = Field(3, ge=1, description="encoder layers (package default 3)")
    n_hidden_decoder: Int = Field(256, ge=1, description="decoder width (package default 256)")
    n_layers_decoder: Int = Field(3, ge=1, description="decoder layers (package default 3)")
    dropout_rate_encoder: Float = Field(0.0, ge=0.0, lt=1.0, description="encoder dropout (package default 0)")
    dropout_rate_decoder: Float = Field(0.0, ge=0.0, lt=1.0, description="decoder dropout (package default 0)")
    variational: Bool = Field(False, description="variational encoder (package default off)")
    max_epochs: Int = Field(2000, ge=1, description="epoch cap (authors' tutorial 2000, with early stopping)")
    batch_size: Int = Field(2048, ge=1, description="cells per batch (authors' tutorial 2048)")
    early_stopping_patience: Int = Field(5, ge=1, description="checks without improvement (tutorial 5)")
    check_val_every_n_epoch: Int = Field(5, ge=1, description="validation every n epochs (tutorial 5)")
    seed: Int = Field(0, ge=0, description="seed")


class CpaModel(IsolatedModel):
    """CPA: seen perturbations in new combinations, doses and contexts."""

    name = "cpa"
    description = ("CPA (cpa-tools 0.8.8, Lotfollahi et al. 2023): compositional perturbation autoencoder with "
                   "dose and covariates; seen perturbations in new combinations/doses/contexts; own environment")
    gives_variance = False
    config_model = CpaConfig
    environment = EnvSpec(name="cpa", requirements=REQUIREMENTS, overrides=OVERRIDES, python="3.11",
                          worker=WORKER)

    def default_config(self) -> dict[str, Any]:
        return defaults_of(CpaConfig)
