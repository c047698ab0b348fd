"""docs/transforms.md: every ```python block runs (each on its own namespace)."""

import pathlib
import re

import pytest

DOC = pathlib.Path(__file__).resolve().parent.parent / "docs" / "transforms.md"
BLOCKS = re.findall(r"^```python\n(.*?)^```", DOC.read_text(), flags=re.S | re.M)


def _title(block: str) -> str:
    text = DOC.read_text()
    before = text[:text.index(block)]
    return re.findall(r"^## (.*)$", before, flags=re.M)[-1]


def test_the_page_has_its_examples():
    titles = {_title(b) for b in BLOCKS}
    for needed in ("Raw JAX", "Flax Linen", "Flax NNX", "Equinox", "Kernel layouts"):
        assert needed in titles
    assert any("mean_pool" in b and "l2_normalize" in b for b in BLOCKS)


@pytest.mark.parametrize("block", BLOCKS, ids=[_title(b) for b in BLOCKS])
def test_example_runs(block):
    exec(compile(block, f"{DOC}:{_title(block)}", "exec"), {"__name__": "docs_example"})
