"""The generated reference pages match the code; the README stays a front door."""

from pathlib import Path

from prunescope.docs import stale_docs

ROOT = Path(__file__).resolve().parents[1]


def test_generated_docs_are_current():
    assert stale_docs() == [], "regenerate with: python -m prunescope.docs"


def test_readme_is_short_and_links_exist():
    import re

    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 200
    for target in re.findall(r"\]\(([^)#\s]+)", text):
        if not target.startswith("http"):
            assert (ROOT / target).exists(), target


def test_every_option_has_help_and_one_flag():
    """One name per setting: no two fields of a command share a flag (aliases included)."""
    from dataclasses import fields

    from prunescope.core.options import Output, Placement, flag_of
    from prunescope.cli import COMMANDS

    for c in COMMANDS.values():
        seen = {}
        for cls in ([c.options_class()] if c.options else []) + [Placement, Output]:
            for f in fields(cls):
                assert f.metadata["help"], f"{cls.__name__}.{f.name} has no help"
                for flag in (flag_of(f), *f.metadata["aliases"]):
                    assert seen.setdefault(flag, cls) is cls, f"{c.name}: {flag} twice"
