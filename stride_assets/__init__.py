"""stride: training-data attribution by sparse recovery from subset perturbations (STRIDE).

``stride_assets.engine`` is the pure engine (no Dagster import); ``stride_assets.defs`` is the
thin Dagster layer over it.
"""

__version__ = "0.1.0"
