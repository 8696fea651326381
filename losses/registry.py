"""Every training method, collected from the ``METHODS`` of each module of ``prefpool.losses``.

A loss module that declares ``METHODS = (Method(...), ...)`` is registered by
existing: nothing here names it. ``METHODS`` maps a method's name to its spec
(``method.Method``), ``LOSSES`` its name to its pure loss function, so a
trainer picks either from a config string.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from types import ModuleType

from .method import Method
from .output import LossOutput


def _modules() -> list[ModuleType]:
    package = importlib.import_module(__package__)
    names = sorted(m.name for m in pkgutil.iter_modules(package.__path__) if m.name != "registry")
    return [importlib.import_module(f"{__package__}.{name}") for name in names]


def _collect() -> dict[str, Method]:
    methods: dict[str, Method] = {}
    for module in _modules():
        for method in getattr(module, "METHODS", ()):
            if method.name in methods:
                raise TypeError(f"method {method.name!r} is declared twice (second time in {module.__name__})")
            methods[method.name] = method
    return methods


METHODS: dict[str, Method] = _collect()
LOSSES: dict[str, Callable[..., LossOutput]] = {name: m.function for name, m in METHODS.items()}


def get_method(name: str) -> Method:
    """Look a method up by name; an unknown name is a ``ValueError`` listing the known ones."""
    try:
        return METHODS[name]
    except KeyError:
        raise ValueError(f"loss: unknown loss {name!r}; expected one of {', '.join(METHODS)}") from None


def get_loss(name: str) -> Callable[..., LossOutput]:
    """The pure loss function of method ``name`` (see ``get_method``)."""
    return get_method(name).function


def losses_for_kind(kind: str) -> tuple[str, ...]:
    """The methods that train on table kind ``kind``, in registry order."""
    return tuple(name for name, m in METHODS.items() if m.kind == kind)
