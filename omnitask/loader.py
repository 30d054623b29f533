"""Finding an app from ``-A module[:attribute]``."""

from __future__ import annotations

import importlib
import os
import sys

from omnitask.app import OmniTask
from omnitask.errors import ConfigurationError

__all__ = ("load_app",)


def load_app(spec: str) -> OmniTask:
    """Import ``module[:attribute]`` and return the OmniTask app it names.

    Without an attribute, the module's ``app`` is used, else its only OmniTask instance. The
    current directory is importable, as it is for ``python -m``.

    Raises:
        ConfigurationError: The module cannot be imported or holds no (or several) apps.
    """
    module_name, _, attr = spec.partition(":")
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        if exc.name and module_name.startswith(exc.name):
            hint = (
                "give a module path without .py"
                if module_name.endswith(".py")
                else "run from the directory that contains it, or add it to PYTHONPATH"
            )
            raise ConfigurationError(
                f"cannot import {module_name!r} given by -A: {exc} ({hint})"
            ) from exc
        raise
    if attr:
        obj: object = module
        for part in attr.split("."):
            obj = getattr(obj, part, None)
        if not isinstance(obj, OmniTask):
            raise ConfigurationError(f"{spec!r} is not an OmniTask app")
        return obj
    found = getattr(module, "app", None)
    if isinstance(found, OmniTask):
        return found
    apps = [v for v in vars(module).values() if isinstance(v, OmniTask)]
    if len(apps) != 1:
        what = "no OmniTask app" if not apps else "several OmniTask apps"
        raise ConfigurationError(f"module {module_name!r} has {what}; use -A {module_name}:name")
    return apps[0]
