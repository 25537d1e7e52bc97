"""The one exception family of xcv_batch.

Domain code raises these; only the CLI turns them into a message and an exit code.
"""

from __future__ import annotations


class XcvError(Exception):
    """Base class: a problem the user can fix, reported as one line without a traceback."""


class ConfigError(XcvError):
    """A job-file key or command-line option is wrong.

    ``key`` is the dotted path of the offending key (``methods.occlusion.stride``); nested validators raise with
    a relative key and their caller prefixes it, so the message always names the full path.
    """

    def __init__(self, key: str, message: str):
        self.key = key
        self.message = message
        super().__init__(f"{key}: {message}" if key else message)

    def under(self, prefix: str) -> "ConfigError":
        """The same error, with ``prefix`` put in front of its key."""
        return ConfigError(f"{prefix}.{self.key}" if self.key else prefix, self.message)


class ModelError(XcvError):
    """The classifier, its weights or its target layer cannot be used."""


class MethodUnavailable(XcvError):
    """A method cannot run faithfully on this model (raised by its constructor); the other methods still run."""


class DataError(XcvError):
    """The image source as a whole cannot be used (a single bad image becomes an error row instead)."""


class ImageError(XcvError):
    """One image cannot be decoded or processed; becomes that image's error rows."""


class OutputError(XcvError):
    """The output directory cannot be written or belongs to a different job."""


class NotFound(XcvError):
    """``browse``: a page asked for an image, method or page that the run does not have (an HTTP 404)."""


class RequestRefused(XcvError):
    """``browse``: a request's parameter is malformed or path-like (an HTTP 400); nothing is read for it."""


def first_line(err: BaseException) -> str:
    """The first line of an exception's text (its type's name when it has none): what a one-line error quotes."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
