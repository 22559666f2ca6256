"""Turn an env spec string into a task-family env or its batched twin (what ``--env`` accepts).

A spec is either

- a registered Gymnasium id, e.g. ``"metarl/Navigation2D-v0"``: built with ``gymnasium.make`` /
  ``gymnasium.make_vec`` (the built-in families have a fast NumPy ``vector_entry_point``; an id
  without one is batched by :class:`~metarl.tasks.TaskSyncVectorEnv`); or
- ``"package.module:Name"`` where ``Name`` (dots allowed: ``module:obj.attr``) is a
  :class:`~metarl.tasks.TaskFamily`, a ``gymnasium.Env`` subclass with the three meta verbs, or a
  function returning either (called with the env keyword arguments, none by default). A class
  that is the ``entry_point`` of a registered id with a ``vector_entry_point`` is batched by that
  fast twin. Gymnasium's own ``"module:EnvId"`` form also works: when the module has no attribute
  ``EnvId`` but importing it registered that id, the id is used.

Import rule: the module is imported normally; if it is not found and the current working
directory is not on ``sys.path``, the directory is appended to ``sys.path`` and the import is
retried. So ``metarl train ... --env examples.custom_pendulum:family`` works from the repository
root even though the ``metarl`` console script does not put the working directory on the path.

Every error is an :class:`EnvSpecError` (a ``ValueError``) that names the spec and the fix:
an unknown id suggests the closest registered one ("did you mean 'metarl/Navigation2D-v0'?"),
an env without the meta verbs shows how to make it a task family with ``TaskFamily``.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import importlib
import inspect
import os
import sys
from typing import Any, Literal

import gymnasium

from metarl.tasks import TASK_FAMILY_HOWTO, TaskFamily, TaskSyncVectorEnv, missing_meta_verbs

SpecKind = Literal["id", "family", "class", "factory"]


class EnvSpecError(ValueError):
    """An env spec that cannot be resolved to a task family; the message says why and how to fix it."""


@dataclasses.dataclass(frozen=True)
class EnvSpecInfo:
    """A resolved env spec.

    Fields:
        spec: the spec string as given.
        kind: ``"id"`` (registered Gymnasium id), ``"family"`` (a TaskFamily), ``"class"`` (a
            ``gymnasium.Env`` subclass) or ``"factory"`` (a function returning an env or a TaskFamily).
        target: the id string, the TaskFamily, the class, or the function.
        vector_id: the registered id whose ``vector_entry_point`` batches this env, if any.
    """

    spec: str
    kind: SpecKind
    target: Any
    vector_id: str | None = None

    def make(self, **kwargs: Any) -> gymnasium.Env:
        """A fresh single env (meta verbs on ``env.unwrapped``); ``kwargs`` go to its constructor."""
        if self.kind == "id":
            env = gymnasium.make(self.target, **kwargs)
            _require_task_family(env, self.spec)
            return env
        if self.kind == "family":
            return self.target.make(**kwargs)
        made = self.target(**kwargs)
        if isinstance(made, TaskFamily):
            return made.make()
        if not isinstance(made, gymnasium.Env):
            raise EnvSpecError(
                f"{self.spec!r} returned a {type(made).__name__}, not a gymnasium.Env or a TaskFamily; "
                "the function must return one of them"
            )
        _require_task_family(made, self.spec)
        return made

    def make_vec(self, num_envs: int, **kwargs: Any) -> gymnasium.vector.VectorEnv:
        """``num_envs`` sub-envs in one batched env with ``set_tasks`` / ``get_tasks``."""
        if not isinstance(num_envs, int) or isinstance(num_envs, bool) or num_envs < 1:
            raise ValueError(f"num_envs must be an int >= 1, got {num_envs!r}")
        if self.vector_id is not None:
            venv = gymnasium.make_vec(self.vector_id, num_envs=num_envs, **kwargs)
            if missing_meta_verbs(venv, ("set_tasks", "get_tasks", "sample_tasks")):
                venv.close()
                self.make(**kwargs).close()  # raises "not a task family" when the single env is none either
                raise EnvSpecError(
                    f"the vector_entry_point of {self.vector_id!r} builds a {type(venv).__name__} without "
                    "set_tasks/get_tasks/sample_tasks; give it those verbs or register no vector_entry_point "
                    "(metarl then batches the single env with TaskSyncVectorEnv)"
                )
            return venv
        if self.kind == "family":
            return self.target.make_vec(num_envs, **kwargs)
        if self.kind == "factory":
            probe = self.target(**kwargs)
            if isinstance(probe, TaskFamily):
                return probe.make_vec(num_envs)
            if not isinstance(probe, gymnasium.Env):
                raise EnvSpecError(f"{self.spec!r} returned a {type(probe).__name__}, not a gymnasium.Env or a "
                                   "TaskFamily; the function must return one of them")
            _require_task_family(probe, self.spec)
            # The probe becomes sub-env 0 rather than being built twice.
            fns = [lambda: probe] + [functools.partial(self.make, **kwargs)] * (num_envs - 1)
            return TaskSyncVectorEnv(fns)
        return TaskSyncVectorEnv(functools.partial(self.make, **kwargs), num_envs)


def _require_task_family(env: gymnasium.Env, spec: str) -> None:
    missing = missing_meta_verbs(env)
    if missing:
        name = type(env.unwrapped).__name__
        env.close()
        raise EnvSpecError(
            f"{spec!r} is not a task family: its env {name} has no {', '.join(missing)} on env.unwrapped. "
            f"To use it, {TASK_FAMILY_HOWTO}; then pass 'your_module:family' as the env spec"
        )


def task_family_ids() -> list[str]:
    """The registered ids under the ``metarl/`` namespace (the built-in task families)."""
    import metarl.envs  # noqa: F401  (registers the built-in ids)

    return sorted(k for k in gymnasium.registry if k.startswith("metarl/"))


def _did_you_mean(spec: str) -> str | None:
    """The closest id, preferring the metarl families over the whole Gymnasium registry."""
    for pool in (task_family_ids(), list(gymnasium.registry)):
        lowered = {k.lower(): k for k in pool}
        close = difflib.get_close_matches(spec.lower(), list(lowered), n=1, cutoff=0.6)
        if close:
            return lowered[close[0]]
    return None


def _unknown_id(spec: str) -> EnvSpecError:
    guess = _did_you_mean(spec)
    hint = f" (did you mean {guess!r}?)" if guess else ""
    return EnvSpecError(
        f"unknown env {spec!r}{hint}; the built-in task families are {task_family_ids()}, and a custom family is "
        "given as 'package.module:Name' (a TaskFamily, a gymnasium.Env subclass with the meta verbs, or a "
        "function returning one)"
    )


def _module_missing(err: ModuleNotFoundError, module: str) -> bool:
    """Whether ``err`` says ``module`` itself (or a parent package) is missing, not one of its imports."""
    return err.name is not None and (module == err.name or module.startswith(err.name + "."))


def _import(module: str, spec: str) -> Any:
    try:
        try:
            return importlib.import_module(module)
        except ModuleNotFoundError as err:
            cwd = os.getcwd()
            on_path = {os.path.abspath(p or os.curdir) for p in sys.path}
            if not _module_missing(err, module) or cwd in on_path:
                raise
            # Console scripts do not put the working directory on sys.path; user modules live there.
            sys.path.append(cwd)
            importlib.invalidate_caches()
            return importlib.import_module(module)
    except ModuleNotFoundError as err:
        if _module_missing(err, module):
            raise EnvSpecError(
                f"cannot import module {module!r} of env spec {spec!r}: {err}. Check the spelling, and run from "
                "the folder that contains it or put that folder on PYTHONPATH"
            ) from err
        raise EnvSpecError(f"importing module {module!r} of env spec {spec!r} failed: {err}") from err
    except Exception as err:
        raise EnvSpecError(
            f"importing module {module!r} of env spec {spec!r} failed: {type(err).__name__}: {err}"
        ) from err


def _describe(obj: Any) -> str:
    if isinstance(obj, TaskFamily):
        return "TaskFamily"
    if inspect.isclass(obj):
        return "Env class" if issubclass(obj, gymnasium.Env) else "class"
    if isinstance(obj, gymnasium.Env):
        return "env instance"
    return "function" if callable(obj) else type(obj).__name__


def _missing_name(module: Any, name: str, spec: str) -> EnvSpecError:
    public = {k: v for k, v in vars(module).items() if not k.startswith("_") and not inspect.ismodule(v)}
    own = {k: v for k, v in public.items() if getattr(v, "__module__", module.__name__) == module.__name__
           or isinstance(v, TaskFamily)}
    close = difflib.get_close_matches(name, list(public), n=1, cutoff=0.6)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    listing = ", ".join(f"{k} ({_describe(v)})" for k, v in sorted(own.items())) or "no public names"
    return EnvSpecError(f"module {module.__name__!r} has no {name!r}{hint} (env spec {spec!r}); it defines: {listing}")


def _vector_id_of(cls: type) -> str | None:
    """The registered id whose entry point is ``cls`` and that has a batched twin."""
    entry = f"{cls.__module__}:{cls.__qualname__}"
    for env_id, spec in gymnasium.registry.items():
        ep = spec.entry_point
        if (ep == entry or ep is cls) and spec.vector_entry_point is not None:
            return env_id
    return None


def _resolve_object(obj: Any, spec: str) -> EnvSpecInfo:
    if isinstance(obj, TaskFamily):
        return EnvSpecInfo(spec, "family", obj)
    if inspect.isclass(obj):
        if not issubclass(obj, gymnasium.Env):
            raise EnvSpecError(f"{spec!r} is a class but not a gymnasium.Env subclass; point the spec at a "
                               "TaskFamily, a gymnasium.Env subclass with the meta verbs, or a function")
        missing = missing_meta_verbs(obj)
        if missing:
            raise EnvSpecError(f"{spec!r} is not a task family: the class {obj.__name__} has no "
                               f"{', '.join(missing)}. To use it, {TASK_FAMILY_HOWTO}")
        return EnvSpecInfo(spec, "class", obj, vector_id=_vector_id_of(obj))
    if isinstance(obj, (gymnasium.Env, gymnasium.vector.VectorEnv)):
        raise EnvSpecError(
            f"{spec!r} is an env instance ({type(obj).__name__}); metarl needs to build many copies, so point the "
            "spec at its class, a TaskFamily, or a function returning a fresh env"
        )
    if callable(obj):
        return EnvSpecInfo(spec, "factory", obj)
    raise EnvSpecError(f"{spec!r} is a {type(obj).__name__}, not a TaskFamily, a gymnasium.Env subclass or a "
                       "function returning one")


def resolve_env(spec: str) -> EnvSpecInfo:
    """Resolve ``spec`` (see the module docstring) without building an env."""
    if not isinstance(spec, str) or not spec.strip():
        raise EnvSpecError(f"an env spec must be a non-empty string such as 'metarl/Navigation2D-v0', got {spec!r}")
    spec = spec.strip()
    import metarl.envs  # noqa: F401  (registers the built-in ids)

    if spec in gymnasium.registry:
        has_vec = gymnasium.registry[spec].vector_entry_point is not None
        return EnvSpecInfo(spec, "id", spec, vector_id=spec if has_vec else None)
    if ":" not in spec:
        raise _unknown_id(spec)
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise EnvSpecError(f"env spec {spec!r} must look like 'package.module:Name'")
    module = _import(module_name, spec)
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            if attr in gymnasium.registry:  # Gymnasium's own "module:EnvId" form
                return resolve_env(attr)
            if obj is module:
                raise _missing_name(module, part, spec)
            raise EnvSpecError(f"{spec!r}: {type(obj).__name__} object has no attribute {part!r}")
        obj = getattr(obj, part)
    return _resolve_object(obj, spec)


def make_env(spec: str, **kwargs: Any) -> gymnasium.Env:
    """A single task-family env for ``spec`` (a registered id or ``"package.module:Name"``);
    ``kwargs`` go to the env constructor. The meta verbs are on ``env.unwrapped``."""
    return resolve_env(spec).make(**kwargs)


def make_vector_env(spec: str, num_envs: int, **kwargs: Any) -> gymnasium.vector.VectorEnv:
    """A batched task env of ``num_envs`` sub-envs with ``set_tasks`` / ``get_tasks`` / ``sample_tasks``:
    the family's fast twin when registered, else a :class:`~metarl.tasks.TaskSyncVectorEnv`."""
    return resolve_env(spec).make_vec(num_envs, **kwargs)
