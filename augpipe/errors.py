"""Errors a user can cause. The CLI turns each into one line and exit code 1."""

import difflib


class AugpipeError(Exception):
    """Base class: the message is complete, one line, and meant for the user."""


class DataError(AugpipeError):
    """A data set, image, manifest or output path that cannot be used."""


class WriteError(DataError):
    """A file that can not be written: a full disk, a quota, a read-only or forbidden folder.
    What was written before stays as it was; the message names the file and the reason."""


class ConfigError(AugpipeError):
    """A setting, ratio, spec or config file that is not valid."""


class PluginError(AugpipeError):
    """An unknown plugin, or a plugin that failed."""


def reject_unknown(d: dict, valid: list[str], where: str, list_valid: bool = False) -> None:
    """Unknown keys are errors, never silently ignored: a typo would otherwise change nothing.
    The closest valid key is suggested; ``list_valid`` names them all when none is close."""
    for key in d:
        if key not in valid:
            close = difflib.get_close_matches(str(key), valid, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else (f" (valid: {', '.join(valid)})" if list_valid else "")
            raise ConfigError(f"unknown key {key!r} in {where}{hint}")


def first_line(err: BaseException) -> str:
    """The first line of an exception's message (at most 300 characters), or its type's name: what
    one error line can say of an error raised by code augpipe does not own."""
    text = str(err).strip()
    return text.splitlines()[0][:300] if text else type(err).__name__
