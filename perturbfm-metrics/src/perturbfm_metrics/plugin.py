"""Entry point of perturbfm-metrics: registers implementations with PerturbFM."""

from perturbfm import hookimpl


@hookimpl
def pfm_register_metric_panels() -> list[type]:
    """Register the metric panels of this distribution."""
    from perturbfm_metrics.basic import BasicPanel

    return [BasicPanel]
