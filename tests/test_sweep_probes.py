"""Sweeping the atomic-capability probes: --variant, --distance and --chain reach the items, which
are built with the swept model's tokenizer and recorded in config.json; a bad value is one line,
exit status 2, and nothing written; --probes' help names every registered probe."""

import functools
import json
import subprocess
import sys
from dataclasses import fields

import pytest

from prunescope.cli import main
from prunescope.core.errors import PrunescopeError
from prunescope.core.options import Output
from prunescope.probe.sweep import SweepOptions, sweep, takes
from prunescope.probe.tasks import PROBES, carry_chain_length

# few items, three conditions (none, skip:3, skip:7) of the default model
FEW = {"items": 6, "windows": [], "sets": "3;7"}


def _quiet(out) -> Output:
    return Output(out=str(out), progress=False, plot=False)


def _items(out, probe: str) -> list[dict]:
    return [json.loads(line) for line in (out / "items" / f"{probe}.jsonl").read_text().splitlines()]


def test_binding_variant_and_distance_reach_the_items(default_model, tmp_path):
    opts = {"probes": ["binding"], "variant": "code", "distance": [3], **FEW}
    rows = sweep(SweepOptions(**opts), loaded=default_model, output=_quiet(tmp_path))
    items = _items(tmp_path, "binding")
    assert len(items) == 6
    assert {(it["meta"]["kind"], it["meta"]["distance"]) for it in items} == {("code", 3)}
    assert all(it["group"].startswith("code:") and it["group"].endswith(" k=3") for it in items)
    assert {r["condition"] for r in rows} == {"none", "skip:3", "skip:7"}
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["probe_options"] == {"variant": "code", "distance": [3]}
    # the resume guard: the same options resume, another variant is another sweep
    assert sweep(SweepOptions(**opts), loaded=default_model, output=_quiet(tmp_path)) == rows
    with pytest.raises(PrunescopeError, match=r"different settings \(probe_options\)"):
        sweep(SweepOptions(**{**opts, "variant": "synthetic"}), loaded=default_model, output=_quiet(tmp_path))


def test_chain_reaches_carry_chain_built_with_the_models_tokenizer(default_model, tmp_path, monkeypatch):
    make, seen = PROBES["carry_chain"], []

    @functools.wraps(make)               # keeps the signature: the sweep sees that it takes a tokenizer
    def spy(n, seed=0, **kw):
        seen.append(kw.get("tokenizer"))
        return make(n, seed, **kw)

    monkeypatch.setitem(PROBES._items, "carry_chain", spy)
    sweep(SweepOptions(probes="carry_chain,copy", chain=5, variant="synthetic", **FEW), loaded=default_model,
          output=_quiet(tmp_path))
    assert seen[-1] is default_model.tokenizer
    items = _items(tmp_path, "carry_chain")
    assert len(items) == 6 and {it["meta"]["kind"] for it in items} == {"synthetic"}
    for it in items:
        m = it["meta"]
        assert carry_chain_length(m["a"], m["b"], m["op"]) >= 5 and len(str(m["a"])) == 6   # digits: chain + 1
    assert len(_items(tmp_path, "copy")) == 6       # a probe without these options ignores them


def test_bad_options_are_one_line_and_write_nothing(tmp_path, capsys):
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "prunescope", "sweep", "--probes", "binding", "--variant", "nope",
                           "--out", str(out)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1 and "--variant" in proc.stderr and "nope" in proc.stderr
    for flags, message in ((["--distance", "2,9"], "--distance must be at most 8"),
                           (["--chain", "5", "--digits", "4"], "chain <= digits")):
        assert main(["sweep", "--probes", "binding,carry_chain", *flags, "--out", str(out), "--quiet"]) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1
    assert not out.exists()
    with pytest.raises(PrunescopeError, match="variant names 'nope'"):
        SweepOptions(probes="string_close", variant="nope").check()


def test_probes_help_names_every_registered_probe(capsys):
    with pytest.raises(SystemExit) as e:
        main(["sweep", "--help"])
    assert e.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    entry = text.split("sweep options:")[1].split("--items ITEMS")[0]          # --probes' own help
    listed = entry.split("probes (")[1].split(")")[0].split(", ")
    assert listed == list(PROBES) and len(listed) == 10
    # the new options' help names exactly the probes whose makers take them (the others ignore them)
    helps = {f.name: f.metadata["help"] for f in fields(SweepOptions)}
    for name in ("variant", "distance", "chain"):
        assert helps[name].split(":")[0].split(", ") == [p for p in PROBES if takes(p, name)], name
