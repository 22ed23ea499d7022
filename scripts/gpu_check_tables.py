#!/usr/bin/env python
"""
The tables of scripts/gpu_check.sh, from the JSON its sections wrote into LOGS: per pretraining
benchmark images/s per GPU under bf16 AMP, the data-loading share of an iteration and peak memory;
SoCo R50-FPN's images/s against the reference figure per V100; the Fast-MoCo / MoCo v3 ratio.
A section that failed (summary.md) gets its status in place of numbers.

    python scripts/gpu_check_tables.py output/gpu_check/logs --summary output/gpu_check/summary.md
"""
import argparse
import glob
import json
import os

# SoCo R50-FPN pretraining throughput per V100 GPU, as quoted in issue 31 (SoCo R50-FPN, 100 epochs on
# ImageNet with 8 V100s). Not verified: the official code's README and tools/SoCo_FPN_100ep.sh
# (github.com/hologerry/SoCo) state no images/s; they train at batch 128 per GPU with apex O1.
SOCO_R50_REFERENCE = 64.0
SOCO_R50_REFERENCE_SOURCE = ("~64 images/s per V100 for SoCo R50-FPN trained 100 epochs on ImageNet with 8 V100s, "
                             "as quoted in issue 31 (the official code's README and scripts, "
                             "github.com/hologerry/SoCo, state no images/s)")


def statuses(summary):
    """{section: status} from summary.md's table."""
    out = {}
    if summary and os.path.isfile(summary):
        with open(summary) as f:
            for line in f:
                cells = [c.strip() for c in line.strip().strip("|").split("|")]
                if len(cells) == 3 and cells[0] not in ("section", "---"):
                    out[cells[0]] = cells[1]
    return out


def load(path):
    with open(path) as f:
        return json.load(f)


def bench_runs(logs, status):
    """[(name, result or None)] in the order the sections ran (summary.md), then any other JSON."""
    names = [s[len("bench_"):] for s in status if s.startswith("bench_")]
    names += sorted(os.path.basename(p)[len("bench_"):-len(".json")]
                    for p in glob.glob(os.path.join(logs, "bench_*.json")))
    out = []
    for name in dict.fromkeys(names):
        path = os.path.join(logs, f"bench_{name}.json")
        out.append((name, load(path) if os.path.isfile(path) else None))
    return out


def _data_share(r):
    data = r["parts"].get("data loading")
    return "-" if data is None or data != data else f"{100 * data / r['iteration_s']:.1f}%"


def _label(name, r, fp32, extra=""):
    bits = [r["meta_architecture"] + extra, f"batch {r['batch']}"] + (["fp32"] if name in fp32 else [])
    return f"{name} ({', '.join(bits)})"


def pretrain_table(runs, status, fp32=()):
    done = [r for _, r in runs if r]
    devices = sorted({r["device"] for r in done})
    kinds = sorted({r["peak_memory_kind"] for r in done})
    amp = "bf16 AMP" + (" unless a run says fp32" if fp32 else "")
    rows = [f"Device {', '.join(devices) or '-'}; {amp}; data loading = share of an iteration spent "
            f"waiting for the batch; peak memory = {', '.join(kinds) or '-'}. The per-part split (forward + "
            "backward + step, momentum update, hooks) is in logs/bench_<run>.log.", "",
            "| run | images/s per GPU (bf16 AMP) | data loading | peak memory (MiB) |",
            "|---|---|---|---|"]
    for name, r in runs:
        if r is None:
            rows.append(f"| {name} | {status.get('bench_' + name, 'no result')} | - | - |")
            continue
        rows.append(f"| {_label(name, r, fp32)} | {r['images_per_s']:.1f} | "
                    f"{_data_share(r)} | {r['peak_memory_mb']:.0f} |")
    return "\n".join(rows)


def soco_r50_table(runs, status, fp32=()):
    r = dict(runs).get("soco_r50")
    rows = ["| run | images/s per GPU (bf16 AMP) | reference images/s per V100 | ratio |", "|---|---|---|---|"]
    if r is None:
        rows.append(f"| soco_r50 | {status.get('bench_soco_r50', 'no result')} | {SOCO_R50_REFERENCE:.0f} | - |")
    else:
        rows.append(f"| {_label('soco_r50', r, fp32, ' R50-FPN')} | {r['images_per_s']:.1f} | "
                    f"{SOCO_R50_REFERENCE:.0f} | {r['images_per_s'] / SOCO_R50_REFERENCE:.2f} |")
    note = [f"Reference: {SOCO_R50_REFERENCE_SOURCE}. Measured on the demo's unlabeled images (160-256 px, "
            "cropped and resized to the 224/224/112 views) and their proposals, not on ImageNet's."]
    if r is not None and not r["device"].startswith("cuda"):
        note.append(f"Device {r['device']} (dry run, tiny sizes): the ratio means nothing.")
    return "\n".join(rows + [""] + note)


def fastmoco_table(logs, status, fp32=()):
    path = os.path.join(logs, "fastmoco.json")
    if not os.path.isfile(path):
        return f"(no fastmoco.json: {status.get('fastmoco', 'not run')})"
    out = [f"{'fp32' if 'fastmoco_ratio' in fp32 else 'bf16 AMP'}:", "",
           "| method | s/iter (median) | time ratio |", "|---|---|---|"]
    out += [f"| {r['method']} | {r['s_per_iter']:.4f} | {r['time_ratio']:.3f} |"
            for r in load(path) if "s_per_iter" in r]
    return "\n".join(out)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("logs", nargs="?", default="output/gpu_check/logs")
    p.add_argument("--summary", default="", help="summary.md: the status of sections with no result")
    p.add_argument("--fp32", default="", help="runs without AMP (space-separated; fastmoco_ratio: the ratio's)")
    args = p.parse_args()
    status, fp32 = statuses(args.summary), set(args.fp32.split())
    runs = bench_runs(args.logs, status)
    print("## Pretraining throughput per method (tools/benchmark_pretrain.py)\n")
    print(pretrain_table(runs, status, fp32))
    print("\n## SoCo R50-FPN against the reference (bench_soco_r50)\n")
    print(soco_r50_table(runs, status, fp32))
    print("\n## Fast-MoCo / MoCo v3 iteration time (tools/benchmark_fastmoco.py)\n")
    print(fastmoco_table(args.logs, status, fp32))


if __name__ == "__main__":
    main()
