"""CPU seconds per footage second of the skeleton stage, and its audit columns, on whole clips of the shared
footage. Each clip goes through the person stage (default params: its face track and person box are the
skeleton's input; its time is not counted) and then the skeleton stage with the default manifest's params.

    .venv/bin/python bench/bench_skeleton.py [--clips A1_...mp4 E1_...mp4] [--set key=value ...]

CPU seconds are the process's and its waited-for children's (the ffmpeg decode), as the pipeline's funnel
counts them; model loading is paid once, on the first clip."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

DEFAULT_CLIPS = ["A1_hdtf_bob_menendez_talking_8s.mp4", "A3_retalk_man_suit_talking_6s.mp4",
                 "A7_liveportrait_s18_woman_medium_shot_9s.mp4", "E1_liveportrait_d6_single_face_34s.mp4"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clips", nargs="+", default=DEFAULT_CLIPS, help="file names in the footage folder, or paths")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="override skeleton params (YAML values)")
    args = ap.parse_args()

    import yaml

    from conftest import FOOTAGE, WEIGHTS, clip_record
    from curation.engine.config import load_manifest
    from stages.base import StageContext, cpu_seconds
    from stages.person import PersonStage
    from stages.skeleton import SkeletonStage

    m = load_manifest()
    params = m.params("skeleton").model_dump()
    for kv in args.set:
        k, v = kv.split("=", 1)
        params[k] = yaml.safe_load(v)
    ctx = StageContext(weights_dir=os.environ.get("CURATION_WEIGHTS", str(WEIGHTS)))
    person = PersonStage(m.params("person"), ctx)
    skeleton = SkeletonStage(SkeletonStage.Params.model_validate(params), ctx)
    total_cpu = total_s = 0.0
    try:
        for name in args.clips:
            path = Path(name) if os.sep in name else FOOTAGE / name
            (rec,) = person.process([clip_record(path)])
            if "face_track" not in rec.data:
                print(f"{path.name}: person stage gave no face track ({rec.reason}); skipped")
                continue
            c0, w0 = cpu_seconds(), time.perf_counter()
            (rec,) = skeleton.process([rec])
            cpu, wall = cpu_seconds() - c0, time.perf_counter() - w0
            total_cpu += cpu
            total_s += rec.duration_s
            cols = {k: (round(v, 3) if isinstance(v, float) else v) for k, v in rec.scores.items() if k.startswith("pose_")}
            print(f"{path.name:48s} {rec.duration_s:5.1f} s  CPU-s/s {cpu / rec.duration_s:.2f}  wall-s/s "
                  f"{wall / rec.duration_s:.2f}  {rec.status} {rec.reason or ''} {cols}", flush=True)
    finally:
        skeleton.close()
        person.close()
    if total_s:
        print(f"total: {total_s:.1f} s of footage, {total_cpu:.1f} CPU-s, {total_cpu / total_s:.3f} CPU-s per footage-s")


if __name__ == "__main__":
    main()
