#!/usr/bin/env python
"""
The tables of scripts/gpu_check.sh, from the JSON its sections wrote into OUTDIR: one row per
pretraining benchmark (where an iteration's time goes) and the Fast-MoCo / MoCo v3 ratio.

    python scripts/gpu_check_tables.py output/gpu_check > output/gpu_check/tables.md
"""
import glob
import json
import os
import sys


def _share(r, key):
    parts = r["parts"]
    return f"{100 * parts[key] / r['iteration_s']:.1f}%" if key in parts else "-"


def pretrain_table(outdir):
    rows = ["| run | device | batch | ms / iter | data | fwd+bwd+step | momentum | images/s | peak MiB |",
            "|---|---|---|---|---|---|---|---|---|"]
    for path in sorted(glob.glob(os.path.join(outdir, "bench_*.json"))):
        with open(path) as f:
            r = json.load(f)
        rows.append(f"| {os.path.basename(path)[6:-5]} ({r['meta_architecture']}) | {r['device']} | "
                    f"{r['batch']} | {1000 * r['iteration_s']:.1f} | {_share(r, 'data loading')} | "
                    f"{_share(r, 'forward+backward+step')} | {_share(r, 'MomentumUpdate')} | "
                    f"{r['images_per_s']:.1f} | {r['peak_memory_mb']:.0f} |")
    return "\n".join(rows)


def fastmoco_table(outdir):
    path = os.path.join(outdir, "fastmoco.json")
    if not os.path.isfile(path):
        return "(no fastmoco.json)"
    with open(path) as f:
        rows = json.load(f)
    out = ["| method | s/iter (median) | time ratio |", "|---|---|---|"]
    out += [f"| {r['method']} | {r['s_per_iter']:.4f} | {r['time_ratio']:.3f} |"
            for r in rows if "s_per_iter" in r]
    return "\n".join(out)


def main():
    outdir = sys.argv[1] if len(sys.argv) > 1 else "output/gpu_check"
    print("## Where a pretraining iteration goes (tools/benchmark_pretrain.py)\n")
    print(pretrain_table(outdir))
    print("\n## Fast-MoCo / MoCo v3 iteration time (tools/benchmark_fastmoco.py)\n")
    print(fastmoco_table(outdir))


if __name__ == "__main__":
    main()
