"""What gives a (prompt, completion) its score: a user function (a reward model: ``reward_model.py``).

Both expose ``identity`` (stored in the ``scores`` manifest, part of the run's
identity: another scorer over the same output folder is refused) and
``score(items) -> list[float]`` over ``(prompt messages, completion text)``.

``--reward-fn`` takes ``"module:function"`` where ``module`` is an importable
module name (``my_pkg.rewards``, found on ``sys.path``: the current folder
is on it for ``python -m``, set ``PYTHONPATH`` otherwise) or a path to a
``.py`` file (``rewards/length.py:score``). The function is called as
``function(prompt_messages, completion_text)`` and must return a real number.
Its source file's sha256 is part of the identity, so editing the function
makes a new run rather than silently mixing old and new scores on resume.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import math
import numbers
from collections.abc import Callable, Sequence
from pathlib import Path

from prefpool.core.errors import UserCodeError
from prefpool.pipeline.io.errors import PipelineConfigError, PipelineInputError

RewardFn = Callable[[list[dict], str], float]
Item = tuple[list[dict], str]  # (prompt messages, completion text)


def _file_sha256(path: str | None) -> str | None:
    if path is None or not Path(path).is_file():
        return None
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _import(module: str, spec: str):
    """The user's module. Importing it runs the user's code: whatever it raises (a syntax error, a
    missing dependency) is a ``UserCodeError`` naming the module, the cause chained."""
    if module.endswith(".py") or "/" in module:
        path = Path(module)
        if not path.is_file():
            raise PipelineConfigError(f"reward_fn: no such file {module!r}")
        name = "prefpool_reward_" + hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:12]
        loader_spec = importlib.util.spec_from_file_location(name, path)
        assert loader_spec is not None and loader_spec.loader is not None
        mod = importlib.util.module_from_spec(loader_spec)
        load = lambda: loader_spec.loader.exec_module(mod)  # noqa: E731
    else:
        if importlib.util.find_spec(module.partition(".")[0]) is None:
            raise PipelineConfigError(
                f"reward_fn {spec!r}: cannot import module {module!r}: no module named "
                f"{module.partition('.')[0]!r} on the Python path (set PYTHONPATH, or give a file: "
                "path/to/rewards.py:function)"
            )
        mod = None
        load = None
    try:
        if load is None:
            return importlib.import_module(module)
        load()
        return mod
    except Exception as exc:  # the user's module raised while importing: see the docstring
        raise UserCodeError(
            f"reward_fn {spec!r}: importing {module!r} failed with {type(exc).__name__}: {exc}; fix the module "
            "(rerun with --debug for its traceback)"
        ) from exc


def load_reward_fn(spec: str | RewardFn) -> tuple[RewardFn, str]:
    """``"module:function"`` or ``"path/file.py:function"`` -> (the function, its name); a callable as is."""
    if callable(spec):
        return spec, getattr(spec, "__qualname__", repr(spec))
    module, sep, name = spec.rpartition(":")
    if not sep or not module or not name:
        raise PipelineConfigError(f"reward_fn: expected 'module:function' or 'file.py:function', got {spec!r}")
    fn = getattr(_import(module, spec), name, None)
    if not callable(fn):
        raise PipelineConfigError(f"reward_fn: {spec!r} is not a callable (the module has no function {name!r})")
    return fn, spec


def call_reward(fn: RewardFn, name: str, prompt: list[dict], text: str, *, where: str) -> object:
    """``fn(prompt, text)``; an exception it raises becomes a ``UserCodeError`` naming ``where`` (the
    prompt id, file and row) with the original chained, so the user can reproduce the call."""
    try:
        return fn(prompt, text)
    except Exception as exc:  # the user's function raised: see the docstring
        shown = text if len(text) <= 60 else text[:57] + "..."
        raise UserCodeError(
            f"reward_fn {name!r} raised {type(exc).__name__}: {exc}, on {where} (completion {shown!r}); fix the "
            "function (rerun with --debug for its traceback)"
        ) from exc


def checked_score(value: object, where: str) -> float:
    """``value`` as a float; anything but a finite real number (NaN, inf, a bool, None, text) is an error."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(float(value)):
        raise PipelineInputError(
            f"score is {value!r} for {where}: a score must be a finite real number (not NaN, inf, a bool or "
            "None); fix the reward function or model"
        )
    return float(value)


class FunctionScorer:
    """Calls ``fn(prompt_messages, completion_text)`` once per completion."""

    def __init__(self, spec: str) -> None:
        fn, name = load_reward_fn(spec)
        self.fn: RewardFn = fn
        self.name = name
        try:
            source = inspect.getsourcefile(fn)
        except TypeError:
            source = None
        self.identity = {"kind": "function", "name": spec, "source_sha256": _file_sha256(source)}

    def load(self) -> None:
        """Nothing to load: the function was imported when the scorer was made."""

    def score(self, items: Sequence[Item], where: Sequence[str] | None = None) -> list[object]:
        """The function's value for each item; ``where[i]`` names item ``i`` in an error."""
        labels = where or [f"item {i}" for i in range(len(items))]
        return [call_reward(self.fn, self.name, p, t, where=w) for (p, t), w in zip(items, labels, strict=True)]
