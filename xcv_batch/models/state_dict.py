"""Reading a state_dict file and loading it into a network so that every key fits, for every kind of ``arch``."""

from __future__ import annotations

import contextlib
import io
import pickle
import warnings
from typing import Iterator

import torch
from torch import nn

from ..errors import ModelError
from .pinned import PinnedWeights


def load_state_dict_file(path: str, pinned: PinnedWeights | None = None) -> dict:
    """The tensors of a ``torch.save(model.state_dict())`` file (also under a ``state_dict`` key, or with the
    ``module.`` / ``_orig_mod.`` prefix of DataParallel / torch.compile); never unpickles Python objects.

    ``pinned``: the file's bytes as the run read them, loaded instead of the file (once checked against the digest
    the run records), so that a file replaced during the run changes nothing.
    """
    source = io.BytesIO(pinned.verified_data()) if pinned is not None else path
    try:
        with warnings.catch_warnings():
            # torch warns before it refuses some files (a pickle protocol it did not write, a TorchScript archive):
            # the one line below says what is wrong, without its two lines first
            warnings.simplefilter("ignore")
            state = torch.load(source, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        # torch's text advises weights_only=False, i.e. running the file's code: never do that for a job file.
        raise ModelError(f"model.weights: {path} holds pickled Python objects (a whole saved model?), not a "
                         "state_dict; save model.state_dict() with torch.save and point at that file") from err
    except Exception as err:  # torch raises several types for a truncated or foreign file
        if "TorchScript" in str(err):  # torch.jit.save's archive: code and weights, refused under weights_only
            raise ModelError(f"model.weights: {path} is a TorchScript archive (torch.jit.save), not a state_dict; "
                             "save model.state_dict() with torch.save and point at that file") from err
        raise ModelError(f"model.weights: cannot load state_dict from {path}: {first_sentence(err)}") from err
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelError(f"model.weights: {path} does not hold a state_dict (a dict of tensors)")
    for prefix in ("module.", "_orig_mod."):
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
    return state


def load_exactly(net: nn.Module, state: dict, context: str) -> None:
    """``load_state_dict`` that must use every key and fill every parameter; one line saying what does not fit."""
    try:
        result = net.load_state_dict(state, strict=False)
    except RuntimeError as err:  # a tensor of another shape
        mismatch = next((line.strip() for line in str(err).splitlines() if "size mismatch" in line), "")
        raise ModelError(f"{context}: {mismatch or first_sentence(err)}") from err
    problems = []
    if result.missing_keys:
        problems.append(f"{len(result.missing_keys)} parameters missing (e.g. {result.missing_keys[0]})")
    if result.unexpected_keys:
        problems.append(f"{len(result.unexpected_keys)} unexpected (e.g. {result.unexpected_keys[0]})")
    if problems:
        raise ModelError(f"{context}: {', '.join(problems)}")


def last_linear_name(net: nn.Module) -> str | None:
    """The name of the last ``nn.Linear`` (a classifier's head, for most architectures)."""
    names = [name for name, module in net.named_modules() if isinstance(module, nn.Linear)]
    return names[-1] if names else None


def head_size(state: dict, head: str | None) -> int | None:
    """Rows of the head's weight in ``state`` (the number of classes the file was trained for), if it has one."""
    weight = state.get(f"{head}.weight") if head else None
    return int(weight.shape[0]) if isinstance(weight, torch.Tensor) and weight.ndim >= 1 else None


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Random initialisation from ``seed`` without touching the caller's global RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def first_sentence(err: BaseException) -> str:
    """The first sentence of an exception's first line, at most 300 characters: what a one-line error quotes."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    first = lines[0] if lines else type(err).__name__
    return first.split(". ")[0][:300]
