"""
scripts/gpu_machine.py and scripts/gpu_check_tables.py (what `make wheelhouse` and the GPU check
rest on), without pip or a GPU: the requirement split, the stand-in's links, the tables' columns.
"""
import importlib.util
import json
import os

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _script(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(REPO, "scripts", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


gm = _script("gpu_machine")
tables = _script("gpu_check_tables")


def test_requirements_split_adds_up(capsys):
    """Every requirements.txt line is on the machine, in requirements-gpu.txt, or not needed."""
    gm.check_requirements(None)
    assert "requirements-gpu.txt" in capsys.readouterr().out
    patterns = gm.machine_patterns()
    assert gm.on_machine("torch", patterns) and gm.on_machine("nvidia-cudnn-cu13", patterns)
    assert gm.on_machine("PyYAML", patterns) and gm.on_machine("typing_extensions", patterns)
    for name in gm.requirement_lines(gm.REQUIREMENTS_GPU):
        assert not gm.on_machine(name, patterns), name


def _dist(site, name, version, files):
    info = os.path.join(site, f"{name.replace('-', '_')}-{version}.dist-info")
    os.makedirs(info)
    with open(os.path.join(info, "METADATA"), "w") as f:
        f.write(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    record = [f"{os.path.basename(info)}/METADATA,,", f"{os.path.basename(info)}/RECORD,,"]
    for path in files:
        os.makedirs(os.path.dirname(os.path.join(site, path)) or site, exist_ok=True)
        with open(os.path.join(site, path), "w") as f:
            f.write("")
        record.append(f"{path},,")
    with open(os.path.join(info, "RECORD"), "w") as f:
        f.write("\n".join(record + ["../../../bin/tool,,"]) + "\n")


def test_standin_links_listed_distributions_only(tmp_path):
    site = str(tmp_path / "site")
    _dist(site, "listed-pkg", "1.0", ["listed_pkg/__init__.py", "single.py"])
    _dist(site, "other", "2.0", ["other/__init__.py"])
    # a namespace folder shared by a listed and an unlisted distribution
    _dist(site, "ns-a", "1.0", ["ns/a/__init__.py"])
    _dist(site, "ns-b", "1.0", ["ns/b/__init__.py"])
    out = tmp_path / "standin"
    chosen, dists = gm.build_standin(str(out), [site], ["listed-pkg", "ns-*a"])
    assert chosen == {"listed-pkg", "ns-a"} and dists == chosen | {"other", "ns-b"}
    assert os.path.islink(out / "listed_pkg") and os.path.islink(out / "single.py")
    assert os.path.islink(out / "listed_pkg-1.0.dist-info")
    assert not os.path.lexists(out / "other") and not os.path.lexists(out / "other-2.0.dist-info")
    assert os.path.isdir(out / "ns") and not os.path.islink(out / "ns")
    assert os.path.islink(out / "ns" / "a") and not os.path.lexists(out / "ns" / "b")


def _bench(path, name, device="cuda:0", ips=100.0, batch=64):
    with open(path / f"bench_{name}.json", "w") as f:
        json.dump({"meta_architecture": "SoCo", "device": device, "batch": batch, "iteration_s": 0.5,
                   "parts": {"data loading": 0.05, "forward+backward+step": 0.45}, "images_per_s": ips,
                   "peak_memory_mb": 1234.0, "peak_memory_kind": "torch.cuda.max_memory_allocated"}, f)


def test_tables_columns_ratio_and_failed_sections(tmp_path):
    _bench(tmp_path, "soco")
    _bench(tmp_path, "soco_r50", ips=96.0)
    summary = tmp_path / "summary.md"
    summary.write_text("| section | status | seconds |\n|---|---|---|\n| install | ok | 9 |\n"
                       "| bench_soco | ok | 20 |\n| bench_jigsaw | TIMEOUT | 22 |\n| bench_soco_r50 | ok | 40 |\n")
    status = tables.statuses(str(summary))
    runs = tables.bench_runs(str(tmp_path), status)
    assert [n for n, _ in runs] == ["soco", "jigsaw", "soco_r50"]
    table = tables.pretrain_table(runs, status)
    assert "| run | images/s per GPU (bf16 AMP) | data loading | peak memory (MiB) |" in table
    assert "| soco (SoCo, batch 64) | 100.0 | 10.0% | 1234 |" in table
    assert "| jigsaw | TIMEOUT | - | - |" in table
    assert "| soco (SoCo, batch 64, fp32) | 100.0 |" in tables.pretrain_table(runs, status, {"soco"})
    soco = tables.soco_r50_table(runs, status)
    assert f"| 96.0 | {tables.SOCO_R50_REFERENCE:.0f} | {96.0 / tables.SOCO_R50_REFERENCE:.2f} |" in soco
    assert "issue 31" in soco


def test_sizes_fails_over_the_limit(tmp_path):
    (tmp_path / "a.whl").write_bytes(b"0" * 2048)

    class Args:
        wheelhouse, max_wheelhouse_mib, max_total_mib = str(tmp_path), 40, 1e6

    gm.sizes(Args)
    Args.max_wheelhouse_mib = 1 / 1024  # 1 KiB
    with pytest.raises(SystemExit):
        gm.sizes(Args)
