"""The one exception family of xcv_batch.

Domain code raises these; only the CLI turns them into a message and an exit code.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Iterator

#: Set to "cli" while the command line runs a verb (in the environment, so that workers it starts inherit it). A
#: message's hint names what the caller can change: a ``--set`` flag on the command line, an argument or job key in
#: Python (the notebook API, a script).
CALLER_ENV = "XCV_BATCH_CALLER"


@contextmanager
def called_from_cli() -> Iterator[None]:
    """While open, messages give the command line's hints (the CLI's ``main`` holds it)."""
    before = os.environ.get(CALLER_ENV)
    os.environ[CALLER_ENV] = "cli"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(CALLER_ENV, None)
        else:
            os.environ[CALLER_ENV] = before


def cli_or_python(cli: str, python: str) -> str:
    """The hint for whoever called: ``cli`` (flags) on the command line, ``python`` (arguments, keys) elsewhere."""
    return cli if os.environ.get(CALLER_ENV) == "cli" else python


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
