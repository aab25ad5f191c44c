"""Entry point of perturbfm-models: registers implementations with PerturbFM."""

from perturbfm import hookimpl


@hookimpl
def pfm_register_models() -> list[type]:
    """The baseline models: control-mean, train-mean, additive, linear; and CGIO (lazy: needs torch)."""
    from perturbfm_models.baselines import ALL_BASELINES
    from perturbfm_models.cgio import CGIOModel

    return [*ALL_BASELINES, CGIOModel]
