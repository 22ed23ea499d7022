#!/usr/bin/env python
"""
SpCL costs: hybrid-memory loss + update time against memory size, clustering time and peak
memory against the number of target features (sparse, and dense N x N where it fits).

    python tools/benchmark_spcl.py [--memory-sizes 10000 100000] [--cluster-sizes 10000 50000 100000]
"""
import argparse

from detpre.benchmarks import markdown_table as format_table
from detpre.benchmarks.clustering import run_clustering, time_memory_step


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--memory-sizes", type=int, nargs="*", default=[10_000, 100_000])
    ap.add_argument("--memory-dim", type=int, default=2048, help="feature dimension (R50: 2048)")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--cluster-sizes", type=int, nargs="*", default=[10_000, 50_000, 100_000])
    ap.add_argument("--cluster-dim", type=int, default=128, help="dimension of the synthetic features")
    ap.add_argument("--dense-max", type=int, default=10_000, help="largest N for the dense N x N baseline")
    ap.add_argument("--k1", type=int, default=30)
    ap.add_argument("--k2", type=int, default=6)
    args = ap.parse_args()

    rows = [(n, args.memory_dim, args.batch, f"{1000 * time_memory_step(n, args.memory_dim, args.batch):.1f}")
            for n in args.memory_sizes]
    print(format_table(["memory entries", "dim", "batch", "loss+update ms/step"], rows), flush=True)
    print()
    rows = []
    for n in args.cluster_sizes:
        for dense in ([False, True] if n <= args.dense_max else [False]):
            sec, mb, st = run_clustering(n, args.cluster_dim, dense, args.k1, args.k2)
            rows.append((n, "dense NxN Jaccard" if dense else "sparse kNN (ours)", f"{sec:.1f}",
                         f"{mb:.0f}", st.get("clusters", "-"), st.get("kept", "-"), st.get("outliers", "-")))
            print(format_table(["N", "method", "seconds", "peak extra MiB", "clusters", "kept",
                                "outliers"], rows[-1:]), flush=True)
    print()
    print(format_table(["N", "method", "seconds", "peak extra MiB", "clusters", "kept", "outliers"], rows))
    big = [n for n in args.cluster_sizes if n > args.dense_max]
    if big:
        print(f"dense N x N not run for N = {big}: three float32 N x N matrices need "
              + ", ".join(f"{3 * 4 * n * n / 2**30:.0f} GiB" for n in big))


if __name__ == "__main__":
    main()
