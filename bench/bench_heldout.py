"""Issue 16's held-out-style check: does a run with the cost savings give the same dataset as a run without them?

    .venv/bin/python bench/bench_heldout.py [--footage DIR] [--num-cpus 2] [--work DIR] [--keep]

Runs `curation run` (local Ray) on every file of the footage folder with

  before   the default manifest with issue 16's savings turned off: skeleton pose, hand and face landmarkers on
           every frame with its own face landmarker (pose_every 1, face_every 1, face_from_sync false), scenes in
           one full decode (two_pass false), clips written at the source's size (video.max_side null). Run three
           times, at skeleton work sizes 488, 500 and 524 (512 today): MediaPipe's pose landmarker moves a
           talking head's body points by p95 8-9 px at 640 under such an imperceptible rescale of its input, so
           a single run is no reference for a few pixels; the three runs' per-point mean is (as in
           bench/bench_skeleton.py's CONSENSUS);
  after    the default manifest as it is.

and checks:
  - the index: the kept clips' keys, starts and ends are the same in every run;
  - pose.npz: per part (body, face, hands), the distance between the after run's keypoints and the before runs'
    consensus, in the after run's pixels (the written clip's: before's keypoints are scaled by the written
    sizes' ratio), over points both found (score above kpt_thr, inside the picture); mean and the worst clip's
    95th percentile, against the stated error of bench/bench_skeleton.py (TOL_MEAN_PX, TOL_PX). The before
    run at 500 px against the consensus of the other two is printed beside it: the model's own reproducibility.

Results: bench/results/bench_heldout.json."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

SHARED = Path(os.environ.get("CURATION_SHARED", ROOT.parent / "shared"))
FOOTAGE = Path(os.environ.get("CURATION_FOOTAGE", SHARED / "footage"))
WEIGHTS = Path(os.environ.get("CURATION_WEIGHTS", SHARED / "weights"))
BEFORE_WORK_SIZES = (488, 500, 524)


def before_manifest(work_size: int) -> dict:
    """The default manifest with issue 16's savings off (module docstring)."""
    import yaml

    m = yaml.safe_load((ROOT / "manifests" / "default.yaml").read_text())
    m["name"] = f"before-issue-16-work{work_size}"
    m["video"]["max_side"] = None
    for st in m["stages"]:
        if st["name"] == "skeleton":
            st["params"].update(pose_every=1, face_every=1, face_from_sync=False, work_size=work_size)
        if st["name"] == "scenes":
            st["params"]["two_pass"] = False
    return m


def run(manifest: Path | None, inp: Path, out: Path, num_cpus: int) -> float:
    cmd = [sys.executable, "-m", "curation.cli", "run", "--input", str(inp), "--output", str(out),
           "--num-cpus", str(num_cpus), "--weights", str(WEIGHTS)]
    if manifest is not None:
        cmd += ["--manifest", str(manifest)]
    t = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t


def kept(out: Path) -> dict[str, dict]:
    """key -> {start_s, end_s, width, height, pose (T, 1, 133, 3)} of the kept clips of an output directory."""
    import pandas as pd

    from curation.formats import pose_npz
    from curation.formats.shards import read_samples

    idx = pd.read_parquet(out / "index.parquet")
    rows = {r["key"]: r for r in idx.to_dict("records") if r.get("shard")}
    res = {}
    for shard in sorted({r["shard"] for r in rows.values()}):
        for key, files in read_samples(str(out / "shards" / Path(shard).name)):
            if key in rows and "pose.npz" in files:
                r = rows[key]
                res[key] = {"start_s": r["start_s"], "end_s": r["end_s"], "width": int(r["width"]),
                            "height": int(r["height"]), "pose": pose_npz.decode(files["pose.npz"])["keypoints_info"]}
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--footage", default=str(FOOTAGE))
    ap.add_argument("--num-cpus", type=int, default=2)
    ap.add_argument("--work", default=None, help="directory for the runs' outputs (default: a temporary one)")
    ap.add_argument("--keep", action="store_true", help="keep the outputs")
    args = ap.parse_args()

    import yaml

    from bench_skeleton import PARTS, TOL_MEAN_PX, TOL_PX, compare, consensus
    from curation.engine.config import load_manifest

    kpt_thr = load_manifest().params("skeleton").kpt_thr
    work = Path(args.work or tempfile.mkdtemp(prefix="bench_heldout_"))
    work.mkdir(parents=True, exist_ok=True)
    inp = Path(args.footage)
    outs = {}
    try:
        for ws in BEFORE_WORK_SIZES:
            mf = work / f"before_{ws}.yaml"
            mf.write_text(yaml.safe_dump(before_manifest(ws), sort_keys=False))
            outs[f"before_{ws}"] = work / f"before_{ws}"
            wall = run(mf, inp, outs[f"before_{ws}"], args.num_cpus)
            print(f"before (work size {ws}): {wall:.0f} s", flush=True)
        outs["after"] = work / "after"
        wall = run(None, inp, outs["after"], args.num_cpus)
        print(f"after (default manifest): {wall:.0f} s", flush=True)

        clips = {name: kept(out) for name, out in outs.items()}
        spans = {name: sorted((k, round(c["start_s"], 3), round(c["end_s"], 3)) for k, c in cl.items())
                 for name, cl in clips.items()}
        same = all(s == spans["after"] for s in spans.values())
        print("kept clips: " + ", ".join(f"{n} {len(c)}" for n, c in clips.items())
              + f"; same keys, starts and ends in every run: {'yes' if same else 'NO'}")
        if not same:
            for n, s in spans.items():
                print(f"  {n}: {s}")

        after = clips["after"]
        errs: dict[str, dict[str, list]] = {"after": {p: [] for p in PARTS}, "before_500": {p: [] for p in PARTS}}
        per_clip = {}
        for key in sorted(after):
            if not all(key in cl for cl in clips.values()):
                continue
            a = after[key]
            runs = []
            for ws in BEFORE_WORK_SIZES:
                b = clips[f"before_{ws}"][key]
                k = np.array(b["pose"], np.float32, copy=True)
                sx, sy = a["width"] / b["width"], a["height"] / b["height"]
                found = (k[..., 2] > 0) | (k[..., 0] != 0) | (k[..., 1] != 0)
                k[..., 0] = np.where(found, k[..., 0] * sx, 0)
                k[..., 1] = np.where(found, k[..., 1] * sy, 0)
                runs.append(k)
            size = (a["width"], a["height"])
            scale = min(1.0, 640 / max(size))  # pixels at a 640-px longer side, as bench_skeleton.py
            per_clip[key] = {}
            for name, got, ref in (("after", a["pose"], consensus(runs)),
                                   ("before_500", runs[1], consensus([runs[0], runs[2]]))):
                n = min(len(ref), len(got))
                c = compare(ref[:n], np.asarray(got[:n]), scale, kpt_thr, size)
                per_clip[key][name] = c
                for p in PARTS:
                    if c[p]["mean_px"] is not None:
                        errs[name][p].append((c[p]["n"], c[p]))
            c = per_clip[key]["after"]
            print(f"  {key[:48]:48s} after: " + "  ".join(
                f"{p} {c[p]['mean_px']:.2f}/{c[p]['p95_px']:.2f}" for p in PARTS if c[p]["mean_px"] is not None))
        summary = {}
        for name, label in (("after", "after vs the before runs' consensus"),
                            ("before_500", "one before run (500 px) vs the other two's: the model's own")):
            row = {}
            for p in PARTS:
                e = errs[name][p]
                n = sum(k for k, _ in e)
                row[p] = {"mean_px": sum(k * c["mean_px"] for k, c in e) / n if n else None,
                          "p95_px": max((c["p95_px"] for _, c in e), default=None)}
            summary[name] = row
            print(f"{label:66s} " + "  ".join(f"{p} {row[p]['mean_px']:.2f}/{row[p]['p95_px']:.2f}px"
                                               for p in PARTS if row[p]["mean_px"] is not None))
        ok = all(r["mean_px"] is None or (r["mean_px"] <= TOL_MEAN_PX and r["p95_px"] <= TOL_PX)
                 for r in summary["after"].values())
        print(f"pose.npz moved by at most the stated error (mean <= {TOL_MEAN_PX} px, worst clip's p95 <= {TOL_PX} px at "
              f"640, every part): {'yes' if ok else 'NO'}")
        res = ROOT / "bench/results"
        res.mkdir(parents=True, exist_ok=True)
        (res / "bench_heldout.json").write_text(json.dumps(
            {"same_spans": same, "spans": spans, "summary": summary, "within_stated_error": ok,
             "per_clip": per_clip}, indent=1, default=str))
    finally:
        if not args.keep and not args.work:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
