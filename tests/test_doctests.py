"""Docstring examples are executed, so the documentation cannot drift from the code."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import metarl

MODULES = sorted(m.name for m in pkgutil.walk_packages(metarl.__path__, "metarl.") if ".__" not in m.name)
MODULES += sorted(f"{pkg}.{m.name}" for pkg in ("metarl.envs", "metarl.agents")
                  for m in pkgutil.iter_modules(importlib.import_module(pkg).__path__))


@pytest.mark.parametrize("name", sorted(set(MODULES)))
def test_docstring_examples(name: str) -> None:
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.failed == 0
