"""Every docstring example in the package runs as written (so the examples stay true).

The modules are imported by their installed names (``prunescope.probe.sweep``), never through the
stage folders' bare names, which is why this replaces pytest's ``--doctest-modules``."""

import doctest
import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
STAGE_FOLDERS = ["probe", "circuits", "prune", "recover", "analysis"]


def _module_names() -> list[str]:
    names = []
    for folder in ["prunescope", *STAGE_FOLDERS]:
        prefix = [] if folder == "prunescope" else ["prunescope"]
        for path in sorted((ROOT / folder).rglob("*.py")):
            parts = prefix + list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__main__":
                continue
            names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


@pytest.mark.parametrize("name", _module_names())
def test_docstring_examples(name):
    module = importlib.import_module(name)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    report = []
    for test in doctest.DocTestFinder().find(module, name):
        runner.run(test, out=report.append)
    assert runner.failures == 0, "".join(report)
