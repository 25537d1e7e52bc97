"""xcv_batch: attribution maps and their quality metrics for image classifiers, at dataset scale.

The Python API — :class:`Explainer` for tensors and images in a notebook, :func:`run` for a job from a script,
:func:`open_results` to read a run — loads on first use, so ``import xcv_batch`` (and the CLI's early checks) stay
free of torch.
"""

__version__ = "0.1.0"

#: public name → the module that defines it
_API = {
    "Explainer": "api",
    "Explanation": "api",
    "run": "api",
    "open_results": "output.results",
    "ConfigError": "errors",
}

__all__ = ["__version__", *_API]


def __getattr__(name: str):
    if name in _API:
        import importlib

        return getattr(importlib.import_module(f".{_API[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
