"""gptlab: pre-train GPT-2-style base models and measure which training interventions pay off.

The Python API (docs/python-api.md): `gptlab.prepare`, `init`, `plan`, `train`, `evaluate`, `generate` and
`compare`, each what the `gptlab` sub-command of that name calls (gptlab/api.py). They are imported on
first use, so `import gptlab` (and with it the command line) stays quick.
"""

import importlib
import types

from gptlab.version import __version__

API = ("prepare", "init", "plan", "train", "evaluate", "generate", "compare")
__all__ = [*API, "UserError", "__version__"]


class _CallablePackage(types.ModuleType):
    """`gptlab.train` and `gptlab.evaluate` are also the packages of those names, and Python sets a package's
    attribute to its subpackage on import; so those two stay modules (`gptlab.train.loop` works) and calling
    them runs the API function of their name."""

    def __call__(self, *args, **kwargs):
        return getattr(importlib.import_module("gptlab.api"), self.__name__.rpartition(".")[2])(*args, **kwargs)


for _name in ("train", "evaluate"):
    importlib.import_module(f"{__name__}.{_name}").__class__ = _CallablePackage


def __getattr__(name: str):
    if name in API:
        return getattr(importlib.import_module("gptlab.api"), name)
    if name == "UserError":
        return importlib.import_module("gptlab.errors").UserError
    raise AttributeError(f"module 'gptlab' has no attribute '{name}'")
