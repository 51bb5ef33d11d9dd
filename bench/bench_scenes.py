"""The scenes stage against PySceneDetect's CLI, per file: cuts and CPU seconds.

    .venv/bin/python bench/bench_scenes.py [--files A1_...mp4 ...] [--set key=value ...] [--reencoded]

Per file of the footage folder (default: every .mp4): `scenedetect -i FILE detect-content list-scenes -n`
(PySceneDetect 0.6's CLI, its defaults; CPU of the child process, start-up included, as a user pays it), and
the scenes stage as a plain class with the manifest's params (ScenesStage.process on the probed source; CPU of
this process and its ffmpeg children, the detector's import paid before). Cuts are 0-based first frames of
every scene but the first; "same" is within +-1 frame. With --reencoded, C1 is also re-encoded with B-frames and
no scene-cut keyframes (x264 scenecut=0), so that its 5 cuts fall inside B-frame gaps (the case the second pass
exists for), and compared the same way. Goal (issue 16): the same cuts on every file, and the stage at least 3x
less CPU than the CLI in total. Results: bench/results/bench_scenes.json."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench_pipeline import FOOTAGE, GOAL_SCENES_VS_CLI, WEIGHTS, parse_cli, run_timed, same_cuts, scenedetect_bin  # noqa: E402


def reencode_c1(d: Path) -> Path:
    out = d / "C1_reencoded_cuts_in_B_gaps.mp4"
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-y", "-i", str(FOOTAGE / "C1_documentary_6shots_anamorphic_25s.mp4"),
                    "-an", "-vf", "scale=352:288", "-c:v", "libx264", "-preset", "veryfast", "-bf", "3",
                    "-x264-params", "scenecut=0:keyint=300:b-pyramid=normal", "-crf", "23", str(out)], check=True)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", nargs="*", default=None)
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="override scenes params")
    ap.add_argument("--reencoded", action="store_true", help="also C1 re-encoded with its cuts inside B-frame gaps")
    args = ap.parse_args()

    import yaml

    import scenedetect.detectors  # noqa: F401  (imported once per worker in the pipeline)
    from curation.engine.config import load_manifest
    from curation.engine.record import CANDIDATE, ClipRecord
    from stages.base import StageContext, cpu_seconds
    from stages.probe import ProbeStage
    from stages.scenes import ScenesStage

    m = load_manifest()
    params = m.params("scenes").model_dump()
    for kv in args.set:
        k, v = kv.split("=", 1)
        params[k] = yaml.safe_load(v)
    ctx = StageContext(weights_dir=str(WEIGHTS), video=m.video.model_dump())
    stage = ScenesStage(ScenesStage.Params.model_validate(params), ctx)
    probe = ProbeStage(m.params("probe"), ctx)
    files = [FOOTAGE / f for f in args.files] if args.files else sorted(FOOTAGE.glob("*.mp4"))
    tmp = tempfile.TemporaryDirectory()
    if args.reencoded:
        files.append(reencode_c1(Path(tmp.name)))
    rows = []
    print(f"{'file':<40} {'s':>6} {'CLI cuts':<28} {'stage cuts':<28} {'same':>4} {'CLI CPU-s':>9} {'stage CPU-s':>11} {'x':>5}")
    for f in files:
        r, _, cli_cpu = run_timed([scenedetect_bin(), "-i", str(f), "detect-content", "list-scenes", "-n"],
                                  cwd=tmp.name)
        cli = parse_cli(r.stdout.decode(errors="replace"))
        (src,) = probe.process([ClipRecord.for_source(str(f))])
        if not src.probe.get("width"):
            print(f"{f.name}: not probed ({src.reason}: {src.message})")
            continue
        src.status, src.stage, src.reason, src.message = CANDIDATE, None, None, None  # too short / no audio: cuts all the same
        c0 = cpu_seconds()
        out = stage.process([src])
        cpu = cpu_seconds() - c0
        fps = float(src.probe["fps"])
        got = next((o.data["cuts_s"] for o in out if "cuts_s" in o.data), [])
        cuts = [int(round(x * fps)) for x in got]
        same = same_cuts(cli["cuts"], cuts)
        rows.append({"file": f.name, "footage_s": src.duration_s, "cli_cuts": cli["cuts"], "stage_cuts": cuts,
                     "same": same, "cli_cpu_s": cli_cpu, "stage_cpu_s": cpu})
        print(f"{f.name[:40]:<40} {src.duration_s:6.1f} {str(cli['cuts'])[:28]:<28} {str(cuts)[:28]:<28} "
              f"{'yes' if same else 'NO':>4} {cli_cpu:9.3f} {cpu:11.3f} {cli_cpu / max(cpu, 1e-9):5.1f}", flush=True)
    stage.close()
    cli_t, st_t = sum(r["cli_cpu_s"] for r in rows), sum(r["stage_cpu_s"] for r in rows)
    secs = sum(r["footage_s"] for r in rows)
    all_same = all(r["same"] for r in rows)
    ratio = cli_t / st_t if st_t else float("inf")
    print(f"total {len(rows)} files, {secs:.1f} s: CLI {cli_t:.2f} CPU-s ({cli_t / secs:.3f} per footage-s), stage "
          f"{st_t:.2f} CPU-s ({st_t / secs:.3f}); CLI/stage {ratio:.2f}x (goal >= {GOAL_SCENES_VS_CLI:g}): "
          f"{'MET' if ratio >= GOAL_SCENES_VS_CLI else 'NOT MET'}; same cuts (+-1 frame) on every file: "
          f"{'yes' if all_same else 'NO'}")
    res = ROOT / "bench" / "results"
    res.mkdir(parents=True, exist_ok=True)
    (res / "bench_scenes.json").write_text(json.dumps({"params": params, "files": rows, "cli_cpu_s": cli_t,
                                                       "stage_cpu_s": st_t, "ratio": ratio, "same_all": all_same}, indent=1))
    return 0 if all_same and ratio >= GOAL_SCENES_VS_CLI else 1


if __name__ == "__main__":
    sys.exit(main())
