"""Errors stride raises for bad input: each names the problem before expensive work starts."""


class StrideError(Exception):
    """Base class of stride's own errors."""


class StrideConfigError(StrideError, ValueError):
    """A configuration value is missing, out of range or inconsistent."""


class StrideInputError(StrideError, ValueError):
    """Input data or a model is unusable (empty corpus, missing column, unknown model path, ...)."""


class StrideNumericalError(StrideError, FloatingPointError):
    """A loss or response became NaN/inf."""
