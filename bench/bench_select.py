"""`curation select --dry-run` on a large synthetic audit: how long a what-if funnel takes (goal: < 10 s for
100,000 clip rows, the command as a user runs it, Python start-up included).

The audit is made here: the default manifest, its thresholds.json, and clips.parquet with one row per clip and a
random value for every declared score, as a `--score-only` run records them (every clip scored by every stage).
Then the same thresholds tightened by --set are timed as a subprocess.

    .venv/bin/python bench/bench_select.py [--rows 100000]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def make_audit(d: Path, rows: int, seed: int = 0) -> None:
    from curation.engine import thresholds
    from curation.engine.config import load_manifest
    from curation.engine.output import OutputDir

    m = load_manifest("default")
    out = OutputDir(d)
    out.create()
    (d / "manifest.yaml").write_text(m.text or Path(m.source_path).read_text())
    thresholds.write(out, m)
    tables = thresholds.table(m)
    rng = np.random.default_rng(seed)
    n_src = max(1, rows // 4)
    src = rng.integers(0, n_src, rows)
    cols = {"key": [f"clip{i:08d}" for i in range(rows)], "source": [f"/data/src{s:07d}.mp4" for s in src],
            "clip_index": np.arange(rows) % 4, "start_s": np.zeros(rows), "duration_s": rng.uniform(5, 50, rows),
            "status": ["kept"] * rows, "stage": [None] * rows, "reason": [None] * rows, "message": [None] * rows,
            "would_reject": [None] * rows, "shard": [None] * rows}
    cols["end_s"] = cols["duration_s"]
    for r in tables["thresholds"]:
        b = float(r["bound"])
        scale = abs(b) if b else 1.0
        cols[r["score"]] = rng.normal(b + (0.5 if r["direction"] == "min" else -0.5) * scale, 0.5 * scale, rows)
    clips = pd.DataFrame(cols)
    clips.to_parquet(d / "audit" / "clips.parquet", index=False)
    (d / "audit" / "runs.jsonl").write_text(json.dumps({"score_only": True, "wall_s": 0}) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=100_000)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp) / "src"
        t0 = time.perf_counter()
        make_audit(d, a.rows)
        made = time.perf_counter() - t0
        cli = [sys.executable, "-m", "curation.cli", "select", str(d), "--dry-run",
               "--set", "person.min_face_px=96", "--set", "quality.min_short_side=384",
               "--where", "duration_s >= 6"]
        import resource

        c0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        p = subprocess.run(cli, capture_output=True, text=True, cwd=ROOT)
        wall = time.perf_counter() - t0
        c1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = (c1.ru_utime - c0.ru_utime) + (c1.ru_stime - c0.ru_stime)
        if p.returncode != 0:
            sys.exit(p.stderr)
        print(p.stdout)
        print(f"synthetic audit: {a.rows} clip rows ({made:.1f} s to make)")
        print(f"curation select --dry-run: {wall:.2f} s wall, {cpu:.2f} CPU-s, process start included "
              f"(goal < 10 s wall): {'MET' if wall < 10 else 'NOT MET'}")


if __name__ == "__main__":
    main()
