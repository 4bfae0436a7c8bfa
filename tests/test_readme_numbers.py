"""Every number the README quotes comes from its source.

The claims tables between ``<!-- claims:qwen -->`` markers must equal a fresh rendering from the CSVs
under docs/results/qwen (``experiments/claims.py``): the full table in docs/results.md, the compact
one (claim, verdict, deciding numbers, and a link to the full table) in README.md; every
other decimal number of the README that sits in a Markdown link to docs/benchmarks.md or
docs/results.md must appear in the linked section; and the README's Results section quotes no
number outside the claims block and such links. Reads text and CSVs only (no model)."""

import doctest
import importlib.util
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
QWEN = ROOT / "docs" / "results" / "qwen"
CHECKED = ("docs/benchmarks.md", "docs/results.md")
# a decimal number standing alone: not part of a name or version (Qwen2.5, 1.5B, Llama-3.1, 2.13.0);
# a speed-up's "x" may follow it
NUMBER = re.compile(r"(?<![\w.])(?<!\w-)(\d+\.\d+)(?=x\b|[^\w.]|\.(?!\d)|$)")
LINK = re.compile(r"\[([^\]]*)\]\(([^)\s#]+)(?:#([^)\s]+))?\)")
FENCE = re.compile(r"^\s*(```|~~~)")


def _claims():
    spec = importlib.util.spec_from_file_location("claims", ROOT / "experiments" / "claims.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


claims = _claims()


def anchor(heading: str) -> str:
    """GitHub's anchor of a heading: lowercase, punctuation dropped, spaces to '-'."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def headings(text: str) -> list[tuple[int, int, str]]:
    """``(line index, level, anchor)`` of every heading outside code blocks, with GitHub's -1, -2
    suffixes on repeated anchors."""
    out, seen, fenced = [], {}, False
    for i, line in enumerate(text.splitlines()):
        if FENCE.match(line):
            fenced = not fenced
        m = None if fenced else re.match(r"^(#{1,6})\s+(.*?)\s*#*\s*$", line)
        if m:
            slug = anchor(m.group(2))
            k = seen.get(slug, 0)
            seen[slug] = k + 1
            out.append((i, len(m.group(1)), slug if k == 0 else f"{slug}-{k}"))
    return out


def section(text: str, slug: str) -> str | None:
    """The text under the heading with anchor ``slug``, up to the next heading of its level or higher."""
    lines, found = text.splitlines(), headings(text)
    for j, (i, level, s) in enumerate(found):
        if s == slug:
            end = next((k for k, lv, _ in found[j + 1:] if lv <= level), len(lines))
            return "\n".join(lines[i:end])
    return None


def numbers(text: str) -> list[str]:
    return NUMBER.findall(text)


def has_number(text: str, number: str) -> bool:
    return re.search(rf"(?<![\d.]){re.escape(number)}(?!\d)", text) is not None


def readme() -> str:
    return (ROOT / "README.md").read_text()


def results_section(text: str) -> str:
    return section(text, "results") or ""


def test_helpers():
    assert anchor("Experiment 3, Qwen2.5-Coder-1.5B-Instruct") == "experiment-3-qwen25-coder-15b-instruct"
    assert anchor("The paper's Qwen claims on this model") == "the-papers-qwen-claims-on-this-model"
    assert numbers("Qwen2.5-Coder-1.5B, Llama-3.1-8B, torch 2.13.0: 0.985 -> 0.175, 10.0x, [-0.035 ± 0.031].") == \
        ["0.985", "0.175", "10.0", "0.035", "0.031"]
    text = "# A\n0.5\n## B, c\n0.25\n```\n# not a heading\n```\n## B, c\n1.5\n# D\n2.5"
    assert section(text, "b-c").splitlines()[1] == "0.25" and "1.5" not in section(text, "b-c")
    assert "1.5" in section(text, "b-c-1") and "2.5" not in section(text, "a")
    assert has_number("is 0.985.", "0.985") and not has_number("0.9851", "0.985")


def test_claims_script_examples():
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    report = []
    for test in doctest.DocTestFinder().find(claims, "claims"):
        runner.run(test, out=report.append)
    assert runner.failures == 0, "".join(report)


@pytest.fixture(scope="module")
def rows() -> list[dict]:
    return claims.claims(QWEN)


@pytest.fixture(scope="module")
def fresh(rows) -> str:
    return claims.render(rows, QWEN)


@pytest.fixture(scope="module")
def compact(rows) -> str:
    return claims.render_compact(rows, QWEN, claims.full_link(ROOT / "README.md", ROOT / "docs/results.md", "qwen"))


@pytest.mark.parametrize("page, kind", [("README.md", "compact"), ("docs/results.md", "fresh")])
def test_claims_block_is_the_fresh_table(page, kind, request):
    block = claims.block((ROOT / page).read_text(), "qwen")
    assert block is not None, f"{page} has no <!-- claims:qwen --> block"
    assert block == request.getfixturevalue(kind), (
        f"{page}'s claims table differs from docs/results/qwen's CSVs: run python "
        "experiments/claims.py docs/results/qwen --readme README.md --results docs/results.md")


def test_compact_table_links_to_the_full_one(compact):
    """The README's table is short and links to the section of docs/results.md that holds the full one."""
    link = compact.splitlines()[-1]
    assert "](docs/results.md#the-papers-qwen-claims-on-this-model)" in link
    part = section((ROOT / "docs/results.md").read_text(), "the-papers-qwen-claims-on-this-model")
    assert part is not None and claims.markers("qwen")[0] in part
    assert compact.startswith("The paper's claims on Qwen2.5-Coder-1.5B-Instruct,")
    header = [line for line in compact.splitlines() if line.startswith("| ")][0]
    assert header == "| claim | verdict | deciding numbers |"


def test_compact_cells_are_short(rows):
    """A dozen words per claim, about 35 per cell of deciding numbers (an interval counts as two),
    each with an interval or saying there is none."""
    for r in rows + claims.claims(ROOT / "no-such-model"):
        assert len(r["claim_short"].split()) <= 12, r["claim_short"]
        assert len(r["decisive"].split()) <= 35, r["decisive"]
    for r in rows:
        assert "[" in r["decisive"] and ("n = " in r["decisive"] or "tasks" in r["decisive"]), r["decisive"]


def test_readme_alone_links_to_claims_md(tmp_path):
    """Without a --results page the compact table links to the claims.md written beside the CSVs."""
    page = tmp_path / "README.md"
    page.write_text("# x\n<!-- claims:mymodel -->\n<!-- /claims:mymodel -->\n")
    (tmp_path / "mymodel").mkdir()
    claims.main([str(tmp_path / "mymodel"), "--readme", str(page)])
    text = page.read_text()
    assert "[the full table](mymodel/claims.md)" in text and "| claim | verdict | deciding numbers |" in text
    assert "| not tested |" in text and (tmp_path / "mymodel" / "claims.md").is_file()


def test_claims_files_are_current(fresh):
    assert (QWEN / "claims.md").read_text() == fresh, "run python experiments/claims.py docs/results/qwen"
    stored = claims.read_table(QWEN / "claims.csv")
    assert [{k: str(v) for k, v in r.items()} for r in stored] == \
        [{k: str(v) for k, v in r.items()} for r in claims.claims(QWEN)]


def test_linked_numbers_are_in_the_linked_section():
    """``[... 0.985 ...](docs/results.md#anchor)``: 0.985 is in that section of that page."""
    missing = []
    for text, target, slug in LINK.findall(readme()):
        if target not in CHECKED or not numbers(text):
            continue
        part = section((ROOT / target).read_text(), slug) if slug else (ROOT / target).read_text()
        assert part is not None, f"{target} has no section #{slug}"
        missing += [(n, f"{target}#{slug}") for n in numbers(text) if not has_number(part, n)]
    assert missing == [], f"README numbers not found in the section they link to: {missing}"


def test_results_numbers_come_from_the_claims_block_or_a_link():
    part = results_section(readme())
    block = claims.block(part, "qwen") or ""
    rest = part.replace(block, "")
    linked = [m.span() for m in LINK.finditer(rest) if m.group(2) in CHECKED and m.group(3)]
    loose = [m.group(1) for m in NUMBER.finditer(rest) if not any(a <= m.start() < b for a, b in linked)]
    assert loose == [], f"numbers in the README's Results section with no source: {loose}"


def _table(path: Path, rows: list[dict]) -> None:
    claims.write_table(rows, path.with_suffix(""), columns=tuple(rows[0]))


def test_missing_tables_are_not_tested_with_their_command(tmp_path):
    rows = claims.claims(tmp_path / "mymodel")
    assert {r["verdict"] for r in rows} == {"not tested"}
    assert "prunescope run experiments/mymodel-retention.yaml" in rows[0]["rule"]
    assert "experiments/mymodel-protect.yaml" in rows[-1]["rule"]


def _gap_rows(ratio: str, corrected: bool) -> list[dict]:
    rows = []
    for metric in ["retention"] + (["chance_corrected_retention"] if corrected else []):
        for stage in (f"pruned-bi-{ratio}", f"pruned-reverse-{ratio}"):
            rows += [{"model": "m", "probe": "gap", "condition": stage, "metric": metric, "value": 0.5, "n": 11,
                      "level": "gap", "ci_low": 0.4, "ci_high": 0.6},
                     {"model": "m", "probe": "classification", "condition": stage, "metric": metric, "value": 0.8,
                      "n": 7, "level": "category", "ci_low": 0.7, "ci_high": 0.9},
                     {"model": "m", "probe": "generative", "condition": stage, "metric": metric, "value": 0.3,
                      "n": 4, "level": "category", "ci_low": 0.2, "ci_high": 0.4}]
    return rows


@pytest.mark.parametrize("corrected, verdict", [(True, "reproduced"), (False, "partly")])
def test_gap_needs_chance_corrected_intervals(tmp_path, corrected, verdict):
    (tmp_path / "retention").mkdir()
    _table(tmp_path / "retention" / "retention.csv", _gap_rows("25", corrected))
    row = claims.claims(tmp_path)[0]
    assert row["verdict"] == verdict
    assert "0.500 [0.400, 0.600]" in row["evidence"]


def test_protection_over_distinct_models(tmp_path):
    (tmp_path / "protect").mkdir()
    rows = [{"model": "", "probe": cat, "condition": "pruned-bi-protected", "reference": "pruned-bi",
             "metric": metric, "value": v, "ci_low": lo, "ci_high": hi, "n": 4, "n_reference": 3, "level": "models"}
            for cat, v, lo, hi in (("generative", 0.08, 0.03, 0.12), ("classification", 0.01, -0.02, 0.04))
            for metric in ("retention_minus_reference", "chance_corrected_retention_minus_reference")]
    _table(tmp_path / "protect" / "models.csv", rows)
    row = claims.claims(tmp_path)[-1]
    assert row["verdict"] == "reproduced", row
    assert "+0.080 [0.030, 0.120] (4 / 3 distinct models)" in row["evidence"]


@pytest.mark.parametrize("margin_name", ["accuracy", "margin_accuracy"])
def test_probe_metrics_read_by_name(tmp_path, margin_name):
    """An older table's ``accuracy`` is the margin metric; ``exact_match`` decides the paper's probe."""
    (tmp_path / "recover").mkdir()
    rows = [{"model": "m", "probe": "arithmetic_multi", "condition": stage, "metric": metric, "value": v, "n": 200}
            for stage, margin, exact in (("base", 0.98, 0.97), ("pruned-bi", 0.40, 0.30),
                                         ("recovered-bi-sgr", 0.80, 0.35))
            for metric, v in ((margin_name, margin), ("exact_match", exact))]
    _table(tmp_path / "recover" / "probes.csv", rows)
    row = claims.claims(tmp_path)[4]
    assert "margin accuracy: 0.980 -> 0.400 -> 0.800" in row["evidence"]
    assert "exact match (the paper's generation-scored metric): 0.970 -> 0.300 -> 0.350" in row["evidence"]
    assert row["verdict"] == "partly"          # the margin rises, exact match does not tell
