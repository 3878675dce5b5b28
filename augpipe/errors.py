"""Errors a user can cause. The CLI turns each into one line and exit code 1."""


class AugpipeError(Exception):
    """Base class: the message is complete, one line, and meant for the user."""


class DataError(AugpipeError):
    """A data set, image, manifest or output path that cannot be used."""


class ConfigError(AugpipeError):
    """A setting, ratio, spec or config file that is not valid."""


class PluginError(AugpipeError):
    """An unknown plugin, or a plugin that failed."""
