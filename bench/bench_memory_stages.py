"""Peak memory of each stage's worker on the shared footage: what `resources.memory_gb` of the manifests is set from.

    .venv/bin/python bench/bench_memory_stages.py [--manifest default] [--clips A1,E1,...] [--out bench/results/memory_stages.json]

Every stage of the manifest runs in a process of its own, as a pipeline worker runs it (pipeline.StageActor for a
model stage, pipeline.run_stage_task for a task stage; one record per batch, as the pipeline's blocks are), over
the records the stage before it produced (the first stage over the sources), with the stage's memory request
set as in a run. Printed per stage: the process's peak RSS (getrusage: models loaded, every decode and model
call included), the peak of the processes it started (ffmpeg, beside the worker; getrusage counts a child from
its fork, so the figure is at least the worker's RSS at that moment and tells of an ffmpeg only where it is
above), and the stage's memory_gb. A Ray worker holds more than a plain process (Ray's core worker): that difference, measured on an
idle actor of a local Ray, is printed too and added in the "as a Ray worker" column.

The clips default to talking heads and the footage's harder decodes: A1 (8 s), E1 (34 s), S03 (1080p), S01
(HEVC, 20 s), S08 (VP9 in WebM, 30 s) and C1 (anamorphic, 6 shots)."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("CURATION_SHARED", ROOT.parent / "shared"))
FOOTAGE = Path(os.environ.get("CURATION_FOOTAGE", SHARED / "footage"))
WEIGHTS = Path(os.environ.get("CURATION_WEIGHTS", SHARED / "weights"))
CLIPS = ["A1_hdtf_bob_menendez_talking_8s.mp4", "E1_liveportrait_d6_single_face_34s.mp4",
         "S03_Wav2Lip-GFPGAN_woman-blazer_blue-backdrop_1080p_7s.mp4",
         "S01_LatentSync_man-black-sweater_studio-talk_hevc_20s.mp4", "S08_EDTalk_TedLieu_address_vp9_30s.webm",
         "C1_documentary_6shots_anamorphic_25s.mp4"]

# Records go from one stage's process to the next as their bytes (ClipRecord.to_bytes), in JSON as latin-1 text.
CHILD = r"""
import json, resource, sys
from curation.engine.config import load_manifest
from curation.engine.pipeline import StageActor, _batch, _records, plan_stages, run_stage_task
from curation.engine.record import ClipRecord

manifest, stage, src, dst, wdir = sys.argv[1:6]
m = load_manifest(manifest)
(plan,) = [p for p in plan_stages(m, wdir, False, {"CPU": 2.0}) if p.name == stage]
recs = [ClipRecord.from_bytes(b.encode("latin-1")) for b in json.loads(open(src).read())] if src.endswith(".json") else \
    [ClipRecord.for_source(line.strip()) for line in open(src) if line.strip()]
actor = StageActor(stage, plan.params, plan.ctx, memory_gb=plan.resources.memory_gb) if plan.uses_models else None
out = []
for r in recs:
    b = _batch([r])
    b = actor(b) if actor else run_stage_task(b, stage, plan.params, plan.ctx, memory_gb=plan.resources.memory_gb)
    out += _records(b)
open(dst, "w").write(json.dumps([r.to_bytes().decode("latin-1") for r in out]))
print("RESULT=" + json.dumps({"stage": stage, "in": len(recs), "out": len(out),
    "active": sum(1 for r in out if stage in r.timings),
    "peak_rss": next(int(ln.split()[1]) * 1024 for ln in open("/proc/self/status") if ln.startswith("VmHWM:")),  # this image's own peak
    "children_peak_rss": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024,
    "memory_gb": plan.resources.memory_gb}))
"""

RAY_BASELINE = r"""
import json, ray
def rss():
    for l in open("/proc/self/status"):
        if l.startswith("VmRSS:"):
            return int(l.split()[1]) * 1024
@ray.remote(num_cpus=0)
class Idle:
    def rss(self):
        import curation.engine.pipeline  # what every pipeline worker imports
        return rss()
import curation.engine.pipeline
plain = rss()  # this process before it connects to Ray: what the stage processes here are
ray.init(address="local", num_cpus=1, include_dashboard=False, log_to_driver=False)
a = Idle.remote()
print("RESULT=" + json.dumps({"ray_worker": ray.get(a.rss.remote()), "plain": plain}))
"""


def child(code: str, *args: str) -> dict:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    p = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=env, cwd=str(ROOT))
    line = next((ln for ln in p.stdout.splitlines() if ln.startswith("RESULT=")), None)
    if p.returncode != 0 or line is None:
        raise SystemExit(f"child failed ({p.returncode}):\n{p.stdout[-2000:]}\n{p.stderr[-4000:]}")
    return json.loads(line[len("RESULT="):])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--manifest", default="default")
    ap.add_argument("--clips", default=",".join(CLIPS), help="comma-separated names under the shared footage")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "memory_stages.json"))
    a = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    from curation.engine.config import load_manifest

    m = load_manifest(a.manifest)
    work = Path(tempfile.mkdtemp(prefix="bench-memory-stages-"))
    src = work / "sources.txt"
    src.write_text("\n".join(str(FOOTAGE / c) for c in a.clips.split(",")) + "\n")
    base = child(RAY_BASELINE)
    extra = max(0, base["ray_worker"] - base["plain"])
    gib = 2**30
    print(f"{len(a.clips.split(','))} sources; a Ray worker holds {extra / 2**20:.0f} MiB more than a plain process "
          f"({base['ray_worker'] / 2**20:.0f} vs {base['plain'] / 2**20:.0f} MiB, both with the pipeline imported)")
    print(f"{'stage':<10} {'clips':>5} {'peak RSS GiB':>12} {'as Ray worker':>13} {'ffmpeg peak GiB':>15} {'memory_gb':>9}")
    rows = []
    for spec in m.enabled_stages():
        dst = work / f"{spec.name}.json"
        r = child(CHILD, a.manifest, spec.name, str(src), str(dst), str(WEIGHTS))
        r["as_ray_worker"] = r["peak_rss"] + extra
        rows.append(r)
        print(f"{spec.name:<10} {r['active']:>5} {r['peak_rss'] / gib:>12.2f} {r['as_ray_worker'] / gib:>13.2f} "
              f"{r['children_peak_rss'] / gib:>15.2f} {r['memory_gb'] or '-':>9}", flush=True)
        src = dst
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps({"manifest": a.manifest, "clips": a.clips.split(","), "ray_extra": extra,
                                       "stages": rows}, indent=1))
    print(f"results: {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
