"""``model.arch: package.module:callable``: the user's own factory, called with no arguments, returning the network.

The module is imported as Python imports any module (it must be on ``sys.path``: installed, or under a folder in
``PYTHONPATH``; on a Ray cluster, on every worker too). A job file naming one therefore runs code, as any Python
configuration system does: a factory that raises (``SystemExit`` included) or returns something other than a module is
one line, but a factory that kills its process (``os.abort``) cannot be caught and is not defended against. Its weights are ``none`` (the factory's own initialisation,
run under the job seed) or a state_dict file; nothing in the factory's output says how images are preprocessed, so
that is ``model.preprocessing``, or ImageNet's when left out.
"""

from __future__ import annotations

import importlib
import os
from typing import Callable

from torch import nn

from ..errors import ConfigError, ModelError
from .pinned import PinnedWeights
from .preprocessing import Preprocessing
from .source import BuiltModel
from .state_dict import first_sentence, load_exactly, load_state_dict_file, seeded


def factory(spec: str) -> Callable[[], object]:
    """The callable ``package.module:name`` names (a dotted attribute path after the colon also works)."""
    module_name, _, attribute = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        if err.name and module_name.startswith(err.name):
            raise ConfigError("model.arch", f"cannot import {module_name} for '{spec}': no module named {err.name} "
                                            "(is its folder on PYTHONPATH?)") from None
        raise ModelError(f"model.arch: importing {module_name} failed: {first_sentence(err)}") from err
    except (Exception, SystemExit, KeyboardInterrupt) as err:  # noqa: BLE001 - the user's module: one line
        raise ModelError(f"model.arch: importing {module_name} failed ({type(err).__name__}: "
                         f"{first_sentence(err)})") from err
    found: object = module
    for part in attribute.split("."):
        if not hasattr(found, part):
            raise ConfigError("model.arch", f"{module_name} has no attribute {attribute} (from '{spec}')")
        found = getattr(found, part)
    if not callable(found):
        raise ConfigError("model.arch", f"'{spec}' is a {type(found).__name__}, not a callable returning an "
                                        "nn.Module")
    return found


def check(spec: str) -> None:
    factory(spec)


def build(spec: str, weights: str, seed: int, resolution: int,
          pinned: PinnedWeights | None = None) -> BuiltModel:
    make = factory(spec)
    if weights.lower() != "none" and pinned is None and not os.path.exists(weights):
        raise ConfigError("model.weights", f"'{weights}' is neither 'none' nor an existing state_dict file, "
                                           f"for {spec}")
    try:
        with seeded(seed):
            net = make()
    except (Exception, SystemExit, KeyboardInterrupt) as err:  # noqa: BLE001 - the user's code: one line
        # SystemExit too: a factory that calls sys.exit() must not end the run with exit 0 and nothing written (or,
        # in a notebook, end the interpreter).
        if isinstance(err, SystemExit):
            why = f"SystemExit({err.code!r})"
        else:
            why = f"{type(err).__name__}: {first_sentence(err)}" if str(err).strip() else type(err).__name__
        raise ModelError(f"model.arch: {spec}() raised {why}") from err
    if not isinstance(net, nn.Module):
        raise ModelError(f"model.arch: {spec}() returned a {type(net).__name__}, not a torch.nn.Module")
    if weights.lower() == "none":
        return BuiltModel(net, None, None, "none")
    load_exactly(net, load_state_dict_file(weights, pinned), f"model.weights: {weights} does not fit {spec}")
    return BuiltModel(net, None, None, os.path.abspath(weights))


def describe(spec: str, weights: str, resolution: int) -> tuple[Preprocessing | None, None]:
    return None, None
