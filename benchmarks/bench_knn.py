"""Benchmark of the item-item kNN (``recbole_mm.graphs.knn.topk_cosine``).

Modes, each run in its own subprocess so its peak RSS is its own:

- ``exact``:  chunked exact top-k (the default and test reference);
- ``floor``:  a bare ``torch.mm`` of the same chunks (same 2 N^2 d flops, same chunk size),
              i.e. the matrix-product floor exact kNN cannot beat;
- ``approx``: low-rank candidates + exact scoring (``approx_dim``), recall@k vs exact;
- ``dense``:  the MMRec way: full ``N x N`` similarity, then ``topk`` (skipped when the
              matrix would exceed ``--dense-max-gb``).

Features: a float32 ``.npy`` (``--features``), e.g. the 4096-d ``image_feat.npy`` of an
Elec-scale (63,001 items) or Baby-scale (7,050 items) synthetic set; docs/datasets.md ("Synthetic
Baby/Elec-scale sets") says how to make one. Only the item count and feature width matter here,
so a few thousand users and interactions are enough.

    # SCRATCH: any scratch folder
    python benchmarks/bench_knn.py --features SCRATCH/elec/image_feat.npy --modes exact,floor,approx
    python benchmarks/bench_knn.py --features SCRATCH/baby/image_feat.npy --modes exact,floor,approx,dense

Prints one JSON line per mode and a markdown table; ``--json PATH`` also saves the results.
Wall times depend on what else runs on the machine: report the load with the numbers.
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def peak_rss_gb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB


def worker(args):
    import numpy as np
    import torch

    sys.path.insert(0, REPO)
    from recbole_mm.graphs.knn import default_chunk_size, normalize_rows, topk_cosine

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    x = np.load(args.features, mmap_mode="r")
    x = torch.from_numpy(np.ascontiguousarray(x[:args.rows] if args.rows else x)).to(device)
    n, d = x.shape
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    result = {"mode": args.worker, "n": n, "d": d, "k": args.k, "threads": args.threads,
              "device": str(device), "load_rss_gb": round(peak_rss_gb(), 3)}
    sync()
    wall, cpu = time.perf_counter(), time.process_time()
    if args.worker == "exact":
        idx, _ = topk_cosine(x, args.k, chunk_size=args.chunk_size)
        np.save(args.exact_out, idx.cpu().numpy())
    elif args.worker == "floor":
        b = args.chunk_size or default_chunk_size(n)
        buf = torch.empty(b, n, device=device)
        for s in range(0, n, b):
            rows = x[s:s + b]
            torch.mm(rows, x.T, out=buf[:rows.shape[0]])
        result["chunk_size"] = b
    elif args.worker == "approx":
        idx, _ = topk_cosine(x, args.k, approx_dim=args.approx_dim,
                             approx_candidates=args.approx_candidates, seed=0)
        result["approx_dim"] = args.approx_dim
        result["approx_candidates"] = args.approx_candidates or max(8 * args.k, 64)
    elif args.worker == "faiss":  # optional faiss-cpu: IVF lists, exact cosines of the candidates
        idx, _ = topk_cosine(x, args.k, backend="faiss", seed=0)
    elif args.worker == "dense":
        xn = normalize_rows(x)
        sim = xn @ xn.T
        idx = torch.topk(sim, args.k, dim=1).indices
        del sim
    sync()
    result["wall_s"] = round(time.perf_counter() - wall, 2)
    result["cpu_s"] = round(time.process_time() - cpu, 2)
    result["peak_rss_gb"] = round(peak_rss_gb(), 3)
    if device.type == "cuda":
        result["peak_gpu_gb"] = round(torch.cuda.max_memory_allocated() / 2**30, 3)
    if args.worker in ("approx", "dense", "faiss") and os.path.isfile(args.exact_out):
        exact = np.load(args.exact_out)
        got = idx.cpu().numpy()
        hits = sum(len(set(a) & set(b)) for a, b in zip(exact.tolist(), got.tolist()))
        result[f"recall@{args.k}"] = round(hits / exact.size, 5)
    print("RESULT " + json.dumps(result), flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--features", required=True, help="float32 .npy [N, d]")
    ap.add_argument("--modes", default="exact,floor,approx", help="comma list of exact,floor,approx,faiss,dense")
    ap.add_argument("--rows", type=int, default=None, help="use the first ROWS rows only (e.g. 20000)")
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--chunk-size", type=int, default=None)
    ap.add_argument("--approx-dim", type=int, default=128)
    ap.add_argument("--approx-candidates", type=int, default=None)
    ap.add_argument("--dense-max-gb", type=float, default=6.0)
    ap.add_argument("--json", default=None, help="also write the results here")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--exact-out", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker(args)

    import numpy as np

    n, d = np.load(args.features, mmap_mode="r").shape
    n = min(n, args.rows or n)
    exact_out = os.path.join(tempfile.gettempdir(), f"bench_knn_exact_{n}_{d}_{args.k}.npy")
    results = []
    for mode in [m.strip() for m in args.modes.split(",") if m.strip()]:
        if mode == "dense" and n * n * 4 / 2**30 > args.dense_max_gb:
            print(f"skip dense: {n}x{n} float32 = {n * n * 4 / 2**30:.1f} GB > --dense-max-gb")
            continue
        cmd = [sys.executable, os.path.abspath(__file__), "--worker", mode, "--exact-out", exact_out]
        for key in ("features", "k", "threads", "device", "chunk_size", "approx_dim", "approx_candidates", "rows"):
            value = getattr(args, key)
            if value is not None:
                cmd += ["--" + key.replace("_", "-"), str(value)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        lines = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")]
        if proc.returncode or not lines:
            print(f"{mode} failed:\n{proc.stderr[-2000:]}")
            continue
        results.append(json.loads(lines[-1][7:]))
        print(lines[-1][7:], flush=True)
    by_mode = {r["mode"]: r for r in results}
    if "exact" in by_mode and "floor" in by_mode:
        e, f = by_mode["exact"], by_mode["floor"]
        e["ratio_to_matmul_wall"] = round(e["wall_s"] / f["wall_s"], 3)
        e["ratio_to_matmul_cpu"] = round(e["cpu_s"] / f["cpu_s"], 3)
    if "exact" in by_mode and "dense" in by_mode:
        dense, exact = by_mode["dense"], by_mode["exact"]
        dense["exact_speedup_vs_dense"] = round(dense["wall_s"] / exact["wall_s"], 3)
    print("\n| mode | N x d | wall s | cpu s | peak RSS GB | notes |\n|---|---|---|---|---|---|")
    for r in results:
        notes = ", ".join(f"{k}={v}" for k, v in r.items()
                          if k.startswith(("ratio", "recall", "approx", "exact_speedup")))
        print(f"| {r['mode']} | {r['n']} x {r['d']} | {r['wall_s']} | {r['cpu_s']} | "
              f"{r['peak_rss_gb']} | {notes} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
