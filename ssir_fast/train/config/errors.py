"""The configuration's exceptions (a module of their own: the run's modules raise them too)."""

__all__ = ["ConfigError", "ConfigWarning"]


class ConfigError(ValueError):
    """An invalid option or combination of options (raised before any work starts)."""


class ConfigWarning(UserWarning):
    """An option that does nothing in the chosen configuration (the run goes on without it)."""
