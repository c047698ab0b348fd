"""The public functions of leanjax.transforms, .weights, .audit and .train document their arguments and
results the way optax does (`Args:` / `Returns:` sections)."""

import importlib
import inspect

import pytest


@pytest.mark.parametrize("package", ["leanjax.transforms", "leanjax.weights", "leanjax.audit", "leanjax.train"])
def test_exported_functions_have_args_and_returns(package):
    module = importlib.import_module(package)
    undocumented = []
    for name in module.__all__:
        obj = getattr(module, name)
        if not inspect.isfunction(obj):
            continue
        doc = inspect.getdoc(obj) or ""
        params = [p for p in inspect.signature(obj).parameters.values() if p.name != "self"]
        documented = all(f"  {p.name}:" in doc or f"*{p.name}:" in doc for p in params)
        if "Returns:" not in doc or (params and ("Args:" not in doc or not documented)):
            undocumented.append(name)
    assert not undocumented, f"{package}: no Args:/Returns: (or an argument left out) in {undocumented}"
