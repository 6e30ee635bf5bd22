"""A module as one library sees it, with some of its names replaced."""

from __future__ import annotations

import types
from typing import Any


def with_names(module: types.ModuleType, **replaced: Any) -> types.ModuleType:
    """A copy of `module` (its names as they are now) with `replaced` put in: for handing
    a library a changed dependency without changing the module everyone else imports.
    A copy rather than a ModuleType subclass that forwards `__getattr__`: the voice frame
    path is compiled with mypyc (shared/native.py), which builds no such subclasses."""
    copy = types.ModuleType(module.__name__, module.__doc__)
    copy.__dict__.update(vars(module))
    copy.__dict__.update(replaced)
    return copy
