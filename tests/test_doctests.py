"""The ``>>>`` examples in the docstrings run and print what they show."""

import doctest
import importlib
import pkgutil

import pytest

import icl_heads

MODULES = [
    "icl_heads",
    *sorted(name for _, name, _ in pkgutil.walk_packages(icl_heads.__path__, "icl_heads.")),
]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    finder = doctest.DocTestFinder(exclude_empty=True)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    for test in finder.find(module, name):
        runner.run(test)
    result = runner.summarize(verbose=False)
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples failed in {name}"


def test_there_are_docstring_examples():
    finder = doctest.DocTestFinder(exclude_empty=True)
    examples = sum(len(t.examples) for name in MODULES for t in finder.find(importlib.import_module(name), name))
    assert examples >= 25
