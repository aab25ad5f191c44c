"""Baseline perturbation-response models."""

from .additive import AdditiveModel
from .linear import LinearModel
from .simple import ControlMeanModel, TrainMeanModel

ALL_BASELINES = [ControlMeanModel, TrainMeanModel, AdditiveModel, LinearModel]

__all__ = ["ALL_BASELINES", "AdditiveModel", "ControlMeanModel", "LinearModel", "TrainMeanModel"]
