"""The driver at scale: its memory and start-up time on a huge listing, and its memory window after window.

    .venv/bin/python bench/bench_scale.py [--entries 1000000] [--sources 200] [--window 20] [--out bench/results/scale.json]

1. A parquet list file of --entries rows (paths that need not exist) is given to `curation run` (the pipeline's
   own run(), local Ray, 2 CPUs) with run.window_sources = --window. The run stops when the second window is
   about to start. Printed: time from start to the first window's submission (the first task), time to the end
   of the first window, and the driver's peak RSS (getrusage: the whole process, Ray's driver-side threads
   included). Targets: < 30 s, < 1 GiB.
2. A real run of --sources sources (symlinks to the shared footage's short clips under distinct names, and
   files of random bytes: a mix that probe rejects and that scenes and write process) with a cheap manifest
   (probe, scenes, write; ultrafast encode) in windows of --window: the driver's RSS (VmRSS) as each window
   starts and at the end. Target: flat (the last window's RSS within 10 % of the second's).

Each part runs in a process of its own (a fresh driver). Wall times are noisy on a shared machine.
Not measured here (no 16-core machine in the session that wrote this): footage-seconds per wall-second at
2, 4, 8 and 16 CPUs."""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("CURATION_SHARED", ROOT.parent / "shared"))
FOOTAGE = Path(os.environ.get("CURATION_FOOTAGE", SHARED / "footage"))
WEIGHTS = Path(os.environ.get("CURATION_WEIGHTS", SHARED / "weights"))

CHEAP = """\
name: bench-scale
description: probe, scenes and write only (the driver's behaviour, not the models', is measured)
run: {{window_sources: {window}}}
video: {{preset: ultrafast}}
output: {{commit_every_sources: {window}}}
stages:
  - name: probe
    params: {{min_duration_s: 1.0}}
    resources: {{num_cpus: 0.25, batch_size: 4, timeout_s: 60}}
  - name: scenes
    params: {{min_s: 1.0}}
    resources: {{num_cpus: 0.5, batch_size: 1, timeout_s: 300}}
  - name: write
    params: {{}}
    resources: {{num_cpus: 0.5, batch_size: 1, timeout_s: 300}}
"""


def rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


class Stop(Exception):
    pass


def child_million(work: Path, entries: int, window: int) -> dict:
    import pyarrow as pa
    import pyarrow.parquet as pq

    load_avg = os.getloadavg()[0]
    listing = work / "listing.parquet"
    if not listing.exists():
        paths = pa.array([f"/nonexistent/corpus/{i // 1000:04d}/src_{i:07d}.mp4" for i in range(entries)])
        pq.write_table(pa.table({"path": paths}), listing)
    import itertools

    from curation.engine.ingest import iter_inputs

    t = time.monotonic()
    first = list(itertools.islice(iter_inputs(str(listing)), window))
    listing_first_window_s = time.monotonic() - t
    assert len(first) == window
    rss_before = rss_bytes()
    manifest = work / "cheap.yaml"
    manifest.write_text(CHEAP.format(window=window))
    from curation.engine import pipeline
    from curation.engine.pipeline import run

    t0 = time.monotonic()
    marks: dict = {}
    init_ray = pipeline.init_ray

    def timed_init_ray(*args, **kw):  # Ray's own start, told apart from the pipeline's work before the first task
        t = time.monotonic()
        init_ray(*args, **kw)
        marks["ray_start_s"] = time.monotonic() - t

    pipeline.init_ray = timed_init_ray

    def on_window(n, sources):
        if n == 0:
            marks["first_task_s"] = time.monotonic() - t0
            marks["window_0_sources"] = len(sources)
        else:
            marks["first_window_done_s"] = time.monotonic() - t0
            raise Stop

    try:
        run(str(listing), str(work / "out"), str(manifest), weights=str(WEIGHTS), num_cpus=2, on_window=on_window)
    except Stop:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"entries": entries, "window": window, "rss_before_run_bytes": rss_before, "driver_peak_rss_bytes": peak,
            "load_avg": os.getloadavg()[0] if load_avg is None else load_avg,
            "listing_first_window_s": listing_first_window_s, **marks}


def child_windows(work: Path, sources: int, window: int) -> dict:
    inp = work / "in"
    inp.mkdir(exist_ok=True)
    real = ["A1_hdtf_bob_menendez_talking_8s.mp4", "S04_VideoReTalking_man-map-backdrop_address_5s.mp4",
            "D9_silent_audio_track_face_5s.mp4", "A4_retalk_woman_glasses_talking_5s.mp4"]
    for i in range(sources):
        if i % 4 == 0:  # a quarter real footage (probe, scenes, write), the rest rejected by probe
            dst = inp / f"s{i:04d}_{real[(i // 4) % len(real)]}"
            if not dst.exists():
                os.symlink(FOOTAGE / real[(i // 4) % len(real)], dst)
        else:
            p = inp / f"s{i:04d}_random.mp4"
            if not p.exists():
                p.write_bytes(os.urandom(20_000))
    manifest = work / "cheap.yaml"
    manifest.write_text(CHEAP.format(window=window))
    from curation.engine.pipeline import run

    per_window = []
    t0 = time.monotonic()

    def on_window(n, srcs):
        per_window.append({"window": n, "sources": len(srcs), "t_s": time.monotonic() - t0, "rss_bytes": rss_bytes()})

    res = run(str(inp), str(work / "out"), str(manifest), weights=str(WEIGHTS), num_cpus=2, on_window=on_window)
    return {"sources": sources, "window": window, "windows": per_window, "rss_end_bytes": rss_bytes(),
            "wall_s": res.wall_s, "kept_clips": res.committed_clips, "driver_bytes_received": res.driver_bytes_received,
            "shard_bytes": res.shard_bytes}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--entries", type=int, default=1_000_000)
    ap.add_argument("--sources", type=int, default=200)
    ap.add_argument("--window", type=int, default=20)
    ap.add_argument("--part", choices=["million", "windows", "both"], default="both")
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "scale.json"))
    ap.add_argument("--_child", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a._child:
        work = Path(a.workdir)
        res = child_million(work, a.entries, a.window) if a._child == "million" else \
            child_windows(work, a.sources, a.window)
        print("RESULT=" + json.dumps(res))
        return 0
    results = {}
    for part in (["million", "windows"] if a.part == "both" else [a.part]):
        work = Path(a.workdir or tempfile.mkdtemp(prefix=f"bench-scale-{part}-"))
        work.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
        p = subprocess.run([sys.executable, __file__, "--_child", part, "--workdir", str(work), "--entries",
                            str(a.entries), "--sources", str(a.sources), "--window", str(a.window)],
                           capture_output=True, text=True, env=env)
        line = next((ln for ln in p.stdout.splitlines() if ln.startswith("RESULT=")), None)
        if p.returncode != 0 or line is None:
            print(p.stdout[-3000:], p.stderr[-5000:], file=sys.stderr)
            return 1
        results[part] = json.loads(line[len("RESULT="):])
    gib = 2**30
    if "million" in results:
        r = results["million"]
        print(f"listing of {r['entries']:,} entries (parquet), windows of {r['window']}:")
        print(f"  time to the first task   {r['first_task_s']:.1f} s   (target < 30 s; includes starting a local Ray)")
        print(f"  of which: starting Ray (ray.init) {r.get('ray_start_s', float('nan')):.1f} s; first window read "
              f"from the listing alone {r['listing_first_window_s']:.2f} s")
        print(f"  load average at the start {r.get('load_avg', float('nan')):.1f} (wall times grow with it)")
        print(f"  first window done        {r.get('first_window_done_s', float('nan')):.1f} s")
        print(f"  driver peak RSS          {r['driver_peak_rss_bytes'] / gib:.3f} GiB   (target < 1 GiB)")
    if "windows" in results:
        r = results["windows"]
        print(f"real run of {r['sources']} sources in windows of {r['window']} ({r['wall_s']:.0f} s wall, "
              f"{r['kept_clips']} clips kept):")
        print("  driver RSS as each window starts (MiB): "
              + " ".join(f"{w['rss_bytes'] / 2**20:.0f}" for w in r["windows"]) + f" | end {r['rss_end_bytes'] / 2**20:.0f}")
        ws = r["windows"]
        if len(ws) >= 3:
            growth = (ws[-1]["rss_bytes"] - ws[1]["rss_bytes"]) / ws[1]["rss_bytes"]
            print(f"  growth from window 2 to the last: {100 * growth:+.1f} %   (target: flat, within 10 %)")
        print(f"  driver received {r['driver_bytes_received']:,} B for {r['shard_bytes']:,} B of shards")
    print("  16-core scaling (footage-s per wall-s at 2/4/8/16 CPUs): not measured (no 16-core machine)")
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
