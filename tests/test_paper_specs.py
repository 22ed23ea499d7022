"""
Every paper config resolves (get_detpre_cfg) to its paper's / official code's values, each cited
in tests/paper_specs.yaml; docs/recipes.md lists every config and names every deviation there.
"""
import fnmatch
import glob
import math
import os
import re

import pytest
import yaml

from detpre.config import get_detpre_cfg

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
with open(os.path.join(REPO, "tests", "paper_specs.yaml")) as f:
    SPECS = yaml.safe_load(f)
TABLE = SPECS["configs"]
PAPER_DIRS = ("soco", "fastmoco", "jigsaw", "self_training", "finetune", "spcl")
ALL_CONFIGS = sorted(os.path.relpath(p, os.path.join(REPO, "configs")).replace(os.sep, "/")
                     for p in glob.glob(os.path.join(REPO, "configs", "**", "*.yaml"), recursive=True))
CHECKED = [n for n, s in TABLE.items() if not s.get("base") and not s.get("demo")]


def _plain(v):
    return [_plain(x) for x in v] if isinstance(v, (list, tuple)) else v


def _same(got, want):
    got, want = _plain(got), _plain(want)
    if isinstance(want, list):
        return isinstance(got, list) and len(got) == len(want) and all(map(_same, got, want))
    if isinstance(want, float) or isinstance(got, float):
        return isinstance(got, (int, float)) and not isinstance(got, bool) and math.isclose(got, want, rel_tol=1e-9)
    return got == want


def _get(cfg, key):
    node = cfg
    for part in key.split("."):
        node = node[part]
    return node


def expected(spec, cfg):
    """[(key, value, source)] of a table entry; the rules need the config's own batch."""
    values = {**spec.get("values", {}), **spec.get("extra_values", {})}
    out = [(k, v[0], v[1]) for k, v in values.items()]
    if "lr_rule" in spec:
        base, per, src = spec["lr_rule"]
        out.append(("SOLVER.BASE_LR", base * cfg.SOLVER.IMS_PER_BATCH / per, src))
    e = spec.get("epochs")
    if e:
        if "iters" in e:
            per_epoch = e["iters"]
        elif e["drop_last"]:
            per_epoch = math.ceil(e["images"] / e["gpus"]) // e["per_gpu"]
        else:
            per_epoch = math.ceil(e["images"] / (e["gpus"] * e["per_gpu"]))
        out.append(("SOLVER.MAX_ITER", e["epochs"] * per_epoch, e["source"]))
        if e.get("warmup_epochs"):
            out.append(("SOLVER.WARMUP_ITERS", e["warmup_epochs"] * per_epoch - e.get("warmup_offset", 0), e["source"]))
        if "gpus" in e:
            out.append(("SOLVER.IMS_PER_BATCH", e["gpus"] * e["per_gpu"], e["source"]))
        if "steps_epochs" in spec:
            steps, src = spec["steps_epochs"]
            out.append(("SOLVER.STEPS", [s * per_epoch for s in steps], src))
    return out


def mismatches(name):
    cfg = get_detpre_cfg(os.path.join(REPO, "configs", name))
    return [f"{key} = {_plain(_get(cfg, key))!r}, the official {value!r} ({src})"
            for key, value, src in expected(TABLE[name], cfg) if not _same(_get(cfg, key), value)]


@pytest.mark.parametrize("name", CHECKED)
def test_paper_config_has_the_official_values(name):
    bad = mismatches(name)
    assert not bad, f"{name}:\n  " + "\n  ".join(bad)


def test_every_paper_config_is_in_the_table_with_its_sources():
    paper = {c for c in ALL_CONFIGS if c.split("/")[0] in PAPER_DIRS}
    assert paper - set(TABLE) == set(), "paper configs without a spec in tests/paper_specs.yaml"
    assert set(TABLE) - set(ALL_CONFIGS) == set(), "specs of configs that do not exist"
    for name, spec in TABLE.items():
        for key, v in {**spec.get("values", {}), **spec.get("extra_values", {})}.items():
            assert isinstance(v, list) and len(v) == 2 and isinstance(v[1], str) and v[1].strip(), (name, key)
        for rule in ("lr_rule", "steps_epochs"):
            if rule in spec:
                assert isinstance(spec[rule][-1], str) and spec[rule][-1].strip(), (name, rule)
        if "epochs" in spec:
            assert spec["epochs"].get("source"), (name, "epochs")
        for d in spec.get("deviations", []):
            assert d.get("mention") and d.get("why"), (name, d)
        assert spec.get("base") or spec.get("demo") or spec.get("values"), name


def recipe_rows():
    """(config patterns, row text) of docs/recipes.md's config table."""
    with open(os.path.join(REPO, "docs", "recipes.md")) as f:
        text = f.read()
    table = text.split("| config |", 1)[1].split("\n## ", 1)[0]
    rows = []
    for line in table.splitlines():
        if not line.startswith("| `"):
            continue
        cell = line.split("|")[1]
        patterns, folder = [], ""
        for item in re.findall(r"`([^`]+)`", cell):
            if "/" in item:
                folder = item.rsplit("/", 1)[0] + "/"
                patterns.append(item)
            else:
                patterns.append(folder + item)
        rows.append((patterns, line))
    return rows


def _rows_of(name, rows):
    return [line for patterns, line in rows if any(fnmatch.fnmatch(name, p) for p in patterns)]


def test_recipes_lists_every_config():
    rows = recipe_rows()
    missing = [c for c in ALL_CONFIGS if not _rows_of(c, rows)]
    assert missing == [], "configs docs/recipes.md does not list"


def test_recipes_names_every_deviation_and_it_is_real():
    rows = recipe_rows()
    bad = []
    for name, spec in TABLE.items():
        found = _rows_of(name, rows)
        cfg = get_detpre_cfg(os.path.join(REPO, "configs", name)) if spec.get("deviations") else None
        for d in spec.get("deviations", []):
            problems = []
            if not any(d["mention"] in line for line in found):
                problems.append(f"{name}: docs/recipes.md does not name the deviation {d['mention']!r} ({d['why']})")
            if "key" in d and not _same(_get(cfg, d["key"]), d["value"]):
                problems.append(f"{name}: {d['key']} is {_get(cfg, d['key'])!r}, the deviation says {d['value']!r}")
            bad.extend(problems)
    assert not bad, "\n".join(bad)


def test_recipes_switches_table_has_every_switch():
    with open(os.path.join(REPO, "docs", "recipes.md")) as f:
        switches = f.read().split("## Switches", 1)[1]
    assert [k for k in SPECS["switches"] if k not in switches] == []
