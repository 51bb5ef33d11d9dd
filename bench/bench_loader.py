"""Benchmark the model's data path on real shards: preparing the training view, the loader's samples/s
per worker, and the whole training loop against the pure training step.

    python bench/bench_loader.py --shards OUT/shards [--configs tiny small base] [--train-steps 200]

For each config it prepares the view of the curation shards (timed), then reads `--batches` batches in
this process (num_workers=0: one loader worker on one core) and reports samples/s by wall clock and per
CPU-second of the process, then the same through a DataLoader with `--workers` processes (wall clock).
For `tiny` it then times, in this one process: the pure training step (train_step on a synthetic batch, as
bench.benchmark times it) and `train()` on the view (what `curation train --config tiny` runs: loader workers,
step, logging), and prints the ratio loop / step. Targets (issue 17): >= 100 samples/s per core for
`small`, ratio <= 1.5. Wall-clock figures on a shared machine are noisy; the per-CPU-second ones less so.
Writes JSON to bench/results/loader.json.
"""

import argparse
import gc
import json
import os
import resource
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from curation.dit.bench import synthetic_batch  # noqa: E402
from curation.dit.configs import CONFIGS  # noqa: E402
from curation.dit.loader import make_loader  # noqa: E402
from curation.dit.train import build_state, train, train_step  # noqa: E402
from curation.dit.view import prepare_view  # noqa: E402


def cpu_s(children: bool = False) -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN if children else resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def time_loader(view: str, cfg, batches: int, workers: int) -> dict:
    loader = iter(make_loader(view, cfg, num_workers=workers))
    next(loader)  # worker start-up and first batch untimed
    w0, c0 = time.perf_counter(), time.process_time()
    for _ in range(batches):
        next(loader)
    wall, cpu = time.perf_counter() - w0, time.process_time() - c0
    del loader
    n = batches * cfg.batch_size
    return {"workers": workers, "samples": n, "wall_s": wall, "samples_per_s": n / wall,
            "samples_per_cpu_s": n / cpu if workers == 0 and cpu > 0 else None}


def pure_step(cfg, steps: int = 30, warmup: int = 5) -> dict:
    """The training step alone (as bench.benchmark times it: train_step on a fixed synthetic batch)."""
    st = build_state(cfg, "cpu")
    batch = synthetic_batch(cfg, cfg.batch_size)
    for _ in range(warmup):
        train_step(st, batch)
    w0, c0 = time.perf_counter(), cpu_s()
    for _ in range(steps):
        out = train_step(st, batch)
    out["loss"].item()
    return {"step_time_s": (time.perf_counter() - w0) / steps, "cpu_s": (cpu_s() - c0) / steps}


def time_train_loop(view: str, cfg, steps: int, out: str) -> dict:
    w0, c0, k0 = time.perf_counter(), cpu_s(), cpu_s(children=True)
    train(view, out, replace(cfg, steps=steps, log_every=10, ckpt_every=steps), progress=False)
    wall = time.perf_counter() - w0
    gc.collect()  # the loader's worker processes are joined once its iterator is gone: their CPU counts
    cpu = cpu_s() - c0 + cpu_s(children=True) - k0
    log = [json.loads(line) for line in open(os.path.join(out, "log.jsonl"))]
    steady = [r["step_time_s"] for r in log[1:]]  # the first interval holds the loader's start-up
    return {"steps": steps, "wall_s": wall, "wall_per_step_s": wall / steps, "cpu_per_step_s": cpu / steps,
            "steady_step_time_s": statistics.median(steady), "first_interval_step_time_s": log[0]["step_time_s"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shards", required=True, help="the shards/ folder of a curation run")
    ap.add_argument("--configs", nargs="+", default=["tiny", "small", "base"], choices=sorted(CONFIGS))
    ap.add_argument("--batches", type=int, default=20, help="batches timed per loader measurement")
    ap.add_argument("--workers", type=int, default=2, help="DataLoader processes for the multi-worker figure")
    ap.add_argument("--train-steps", type=int, default=200, help="steps of the tiny training loop")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch intra-op threads")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "loader.json"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    results = {"shards": args.shards, "cpus": os.cpu_count(), "threads": args.threads, "configs": {}}
    with tempfile.TemporaryDirectory(prefix="bench-loader-") as td:
        for name in args.configs:
            cfg = CONFIGS[name]
            view = os.path.join(td, f"view-{name}")
            w0, c0, k0 = time.perf_counter(), cpu_s(), cpu_s(children=True)
            meta = prepare_view(args.shards, cfg, view, progress=False)
            prep = {"wall_s": time.perf_counter() - w0, "cpu_s": cpu_s() - c0 + cpu_s(children=True) - k0,
                    "clips": meta["clips"], "frames": meta["frames"], "left_out": len(meta["left_out"]),
                    "bytes": sum(os.path.getsize(os.path.join(view, s)) for s in meta["shards"])}
            r = {"prepare": prep, "one_worker": time_loader(view, cfg, args.batches, 0),
                 "workers": time_loader(view, cfg, args.batches, args.workers)}
            results["configs"][name] = r
            one, many = r["one_worker"], r["workers"]
            print(f"{name:6s} view: {prep['clips']} clips, {prep['frames']} frames, {prep['bytes'] / 2**20:.1f} MiB, "
                  f"prepared in {prep['wall_s']:.1f} s wall / {prep['cpu_s']:.1f} CPU-s "
                  f"({prep['frames'] / prep['cpu_s']:.0f} frames per CPU-s)", flush=True)
            print(f"{name:6s} loader, batch {cfg.batch_size}: one worker {one['samples_per_s']:.0f} samples/s wall, "
                  f"{one['samples_per_cpu_s']:.0f} samples per CPU-s; {args.workers} workers "
                  f"{many['samples_per_s']:.0f} samples/s wall", flush=True)
            if name == "tiny":
                pure = pure_step(cfg)
                loop = time_train_loop(view, cfg, args.train_steps, os.path.join(td, "run-tiny"))
                pure2 = pure_step(cfg)  # again: the machine's load drifts
                step = min(pure["step_time_s"], pure2["step_time_s"])
                pure_cpu = min(pure["cpu_s"], pure2["cpu_s"])
                r["train"] = {"pure_step_s": [pure["step_time_s"], pure2["step_time_s"]],
                              "pure_step_cpu_s": [pure["cpu_s"], pure2["cpu_s"]],
                              **loop, "ratio_steady": loop["steady_step_time_s"] / step,
                              "ratio_wall": loop["wall_per_step_s"] / step,
                              "ratio_cpu": loop["cpu_per_step_s"] / pure_cpu}
                print(f"tiny   train loop: pure step {1000 * pure['step_time_s']:.1f} / {1000 * pure2['step_time_s']:.1f} ms "
                      f"(before / after); train() on the view {1000 * loop['steady_step_time_s']:.1f} ms per step "
                      f"steady ({1000 * loop['wall_per_step_s']:.1f} ms per step over {loop['steps']} steps with "
                      f"start-up and checkpoint): ratio {r['train']['ratio_steady']:.2f} steady, "
                      f"{r['train']['ratio_wall']:.2f} whole run (target <= 1.5); CPU-s per step {pure_cpu:.3f} pure, "
                      f"{loop['cpu_per_step_s']:.3f} whole run with its loader worker: ratio {r['train']['ratio_cpu']:.2f}",
                      flush=True)
    if "small" in results["configs"]:
        s = results["configs"]["small"]["one_worker"]["samples_per_cpu_s"]
        print(f"small  loader: {s:.0f} samples per CPU-s per worker (target >= 100): {'met' if s >= 100 else 'NOT met'}")
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(results, f, indent=1)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
