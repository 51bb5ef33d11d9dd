"""The pipeline's cost against the decode floor and against PySceneDetect's own CLI, in one run on the same files.

    .venv/bin/python bench/bench_pipeline.py [--footage DIR] [--files A1_...mp4 ...] [--repeat N] [--ray]
                                             [--set stage.key=value ...] [--out bench/results/pipeline.json]

The input is every .mp4 of the footage folder (or --files), each taken --repeat times (symlinks under new
names, so every copy is its own source, as in a real run): a few minutes of footage. On that input, one
after the other in this process:

  floor     `ffmpeg -threads 1 -i FILE -f null -` per file: one plain single-threaded decode (video and audio)
  cli       `scenedetect -i FILE detect-content list-scenes -n` per file: PySceneDetect 0.6's CLI with its
            defaults (threshold 27, min scene 0.6 s, auto downscale to ~256 px, OpenCV decode); its cuts are
            parsed from the printed scene list
  stages    every enabled stage of the manifest (default: manifests/default.yaml, params as m.params(name)) as
            a plain class, no Ray, in pipeline order, one record per call (the manifest's batch size is 1 for
            every stage after probe); only records still alive go on, as in the pipeline. Model loading (and a
            2-s warm-up clip through each model stage) is timed apart as `init`.
  --ray     also a real `curation run --num-cpus N` (local Ray) on the same input in a temporary directory:
            wall time, CPU of the whole process tree (driver, Ray's own processes, workers and their ffmpeg;
            read from /proc) and the stage CPU the run's funnel.json reports

CPU seconds are user + system of this process and of the children it waited for (ffmpeg, ffprobe, the CLI),
from resource.getrusage deltas, as the pipeline's funnel counts them. "footage s" is what an entry saw: the
whole input for floor and cli, the sources/clips still alive when a stage ran for the stages. The table gives
footage-seconds per CPU-second and the cost as a multiple of the floor ((CPU-s / footage-s) over the floor's).
Checked against the issues' goals: end to end >= 1.5 footage-s per CPU-s; skeleton <= 0.6 CPU-s per footage-s; the scenes stage >= 3x faster than the
CLI with the same cuts (within +-1 frame at the source frame rate) on every file. A breakdown of the scenes
stage (its decode alone, the detector alone) and of the CLI (start-up as `scenedetect --help`, PySceneDetect's
detect() API in-process) is
printed with it (--no-diagnose skips it)."""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("GLOG_minloglevel", "2")  # MediaPipe's C++ warnings
sys.path.insert(0, str(ROOT / "bench"))

SHARED = Path(os.environ.get("CURATION_SHARED", ROOT.parent / "shared"))
FOOTAGE = Path(os.environ.get("CURATION_FOOTAGE", SHARED / "footage"))
WEIGHTS = Path(os.environ.get("CURATION_WEIGHTS", SHARED / "weights"))
WARM_CLIP = "A1_hdtf_bob_menendez_talking_8s.mp4"
GOAL_END_TO_END = 1.5  # footage-s per CPU-s (issue 16)
GOAL_SKELETON = 0.6  # CPU-s per footage-s of the skeleton stage (issue 16)
GOAL_SCENES_VS_CLI = 3.0


def child_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def run_timed(cmd: list[str], cwd: str | None = None) -> tuple[subprocess.CompletedProcess, float, float]:
    """Run a command; (result, wall s, CPU s of the child)."""
    c0, w0 = child_cpu(), time.perf_counter()
    p = subprocess.run(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, check=False)
    return p, time.perf_counter() - w0, child_cpu() - c0


def scenedetect_bin() -> str:
    p = ROOT / ".venv" / "bin" / "scenedetect"
    return str(p) if p.exists() else (shutil.which("scenedetect") or "scenedetect")


_ROW = re.compile(r"^\s*\|\s*(\d+)\s*\|\s*(\d+)\s*\|\s*([0-9:.]+)\s*\|\s*(\d+)\s*\|", re.M)


def parse_cli(text: str) -> dict:
    """Cut frames (0-based: the first frame of every scene but the first) from `list-scenes -n` output.
    The table's Start Frame is 1-based (scene 2 of a cut at frame 25 starts at "26")."""
    rows = _ROW.findall(text)
    cuts = [int(r[1]) - 1 for r in rows[1:]]
    m = re.search(r"Processed (\d+) frames", text)
    return {"cuts": cuts, "n_scenes": len(rows), "frames": int(m.group(1)) if m else None}


def same_cuts(a: list[int], b: list[int], tol: int = 1) -> bool:
    a, b = sorted(a), sorted(b)
    return len(a) == len(b) and all(abs(x - y) <= tol for x, y in zip(a, b))


def make_inputs(files: list[Path], repeat: int, d: Path) -> list[Path]:
    """Every file `repeat` times, as symlinks with distinct names (distinct sources, distinct keys)."""
    d.mkdir(parents=True, exist_ok=True)
    out = []
    for k in range(repeat):
        for f in files:
            link = d / f"r{k:02d}_{f.name}"
            if not link.exists():
                os.symlink(f.resolve(), link)
            out.append(link)
    return out


def apply_overrides(m, sets: list[str]):
    """stage.key=value (YAML value) overrides: re-validated stage params; returns the manifest's raw dict too."""
    import yaml

    from stages import stage_class

    raw = yaml.safe_load(Path(m.source_path).read_text(encoding="utf-8"))
    for kv in sets:
        key, _, val = kv.partition("=")
        stage, _, k = key.partition(".")
        spec = next((s for s in raw["stages"] if s["name"] == stage), None)
        if spec is None or not k:
            raise SystemExit(f"--set {kv}: expected stage.key=value with a stage of the manifest")
        spec.setdefault("params", {})[k] = yaml.safe_load(val)
        cls = stage_class(stage)
        m._params[stage] = cls.Params.model_validate({**m.params(stage).model_dump(), k: yaml.safe_load(val)})
    return raw


# ---------------------------------------------------------------------------------------------------

def bench_floor(inputs: list[Path], dur: dict[str, float]) -> dict:
    per = []
    for p in inputs:
        cmd = ["ffmpeg", "-nostdin", "-v", "error", "-threads", "1", "-i", str(p), "-f", "null", "-"]
        r, wall, cpu = run_timed(cmd)
        per.append({"file": p.name, "footage_s": dur[p.name], "cpu_s": cpu, "wall_s": wall, "rc": r.returncode})
    return {"cmd": "ffmpeg -nostdin -v error -threads 1 -i FILE -f null -", "per_file": per, **_totals(per)}


def bench_cli(inputs: list[Path], dur: dict[str, float], cwd: str) -> dict:
    per = []
    for p in inputs:
        r, wall, cpu = run_timed([scenedetect_bin(), "-i", str(p), "detect-content", "list-scenes", "-n"], cwd=cwd)
        text = r.stdout.decode("utf-8", "replace")
        parsed = parse_cli(text)
        per.append({"file": p.name, "footage_s": dur[p.name], "cpu_s": cpu, "wall_s": wall, "rc": r.returncode,
                    **parsed, **({"output_tail": text[-1500:]} if r.returncode else {})})
    return {"cmd": "scenedetect -i FILE detect-content list-scenes -n", "per_file": per, **_totals(per)}


def _totals(per: list[dict]) -> dict:
    return {"footage_s": sum(x["footage_s"] for x in per), "cpu_s": sum(x["cpu_s"] for x in per),
            "wall_s": sum(x["wall_s"] for x in per), "n": len(per)}


def bench_stages(m, inputs: list[Path], warm_path: Path | None, log) -> tuple[dict, dict, list]:
    """Every enabled stage as a plain class, in order; per stage: init, then per-record process()."""
    from curation.engine.record import ClipRecord
    from stages import stage_class
    from stages.base import StageContext, cpu_seconds

    specs = m.enabled_stages()
    stages = {}
    init = {}
    for spec in specs:
        cls = stage_class(spec.name)
        ctx = StageContext(weights_dir=str(WEIGHTS), fps=m.video.fps, audio_rate=m.video.audio_rate,
                           score_only=False, timeout_s=spec.resources.timeout_s, video=m.video.model_dump(),
                           use_gpu=False)
        w0, c0 = time.perf_counter(), cpu_seconds()
        stages[spec.name] = cls(m.params(spec.name), ctx)
        if spec.name == "scenes":
            import scenedetect.detectors  # noqa: F401  (imported once per worker in the pipeline)
        init[spec.name] = {"wall_s": time.perf_counter() - w0, "cpu_s": cpu_seconds() - c0}
    # a 2-s clip through every model stage: lazy model loads and first-call costs, paid once per actor
    if warm_path is not None:
        (w,) = stages["probe"].process([ClipRecord.for_source(str(warm_path))])
        w = w.child(0, 1, 0.0, min(2.0, w.duration_s or 2.0))
        for spec in specs:
            st = stages[spec.name]
            if not type(st).uses_models:
                continue
            w.status, w.stage, w.reason = "candidate", None, None
            w0, c0 = time.perf_counter(), cpu_seconds()
            (w,) = st.process([w])
            init[spec.name]["wall_s"] += time.perf_counter() - w0
            init[spec.name]["cpu_s"] += cpu_seconds() - c0
            init[spec.name]["warmup"] = f"{w.status} {w.reason or ''}".strip()
    recs = [ClipRecord.for_source(str(p)) for p in inputs]
    results = {}
    rejected_all: list = []
    cuts: dict[str, dict] = {}
    for spec in specs:
        st = stages[spec.name]
        active = [r for r in recs if st.should_process(r)]
        seen = 0.0
        out_all = []
        per = []
        w_tot = c_tot = 0.0
        for r in active:
            w0, c0 = time.perf_counter(), cpu_seconds()
            out = st.process([r])
            wall, cpu = time.perf_counter() - w0, cpu_seconds() - c0
            w_tot += wall
            c_tot += cpu
            secs = r.duration_s  # after probe: the probed duration (0 for an unreadable source)
            seen += secs
            out_all.extend(out)
            per.append({"key": r.key, "file": Path(r.source).name, "footage_s": secs, "cpu_s": cpu, "wall_s": wall,
                        "out": len(out), "alive": sum(o.alive for o in out)})
            if spec.name == "scenes":
                fps = float(r.probe.get("fps") or 0.0)
                got = next((o.data["cuts_s"] for o in out if "cuts_s" in o.data), None)
                cuts[Path(r.source).name] = {"fps": fps, "cuts_s": got,
                                             "cuts": None if got is None else [int(round(x * fps)) for x in got],
                                             "cpu_s": cpu, "wall_s": wall, "footage_s": secs,
                                             "status": "ok" if got is not None else f"{out[0].reason}"}
        alive = [o for o in out_all if o.alive]
        reasons = collections.Counter(o.reason for o in out_all if not o.alive and o.stage == spec.name)
        results[spec.name] = {"in": len(active), "out": len(alive), "footage_s": seen,
                              "seconds_out": sum(o.duration_s for o in alive), "cpu_s": c_tot, "wall_s": w_tot,
                              "rejected": dict(reasons), "init": init[spec.name], "per_record": per}
        log(f"  {spec.name:<9} {len(active):3d} in, {len(alive):3d} out, {seen:7.1f} footage s, "
            f"{c_tot:7.1f} CPU s, {w_tot:7.1f} wall s  {dict(reasons) or ''}")
        rejected_all.extend(o for o in out_all if not o.alive)
        recs = alive
    for st in stages.values():
        st.close()
    kept = [{"key": r.key, "file": Path(r.source).name, "start_s": r.start_s, "end_s": r.end_s} for r in recs]
    return results, cuts, kept


def diagnose_scenes(m, files: list[str], by_name: dict[str, Path]) -> dict:
    """Where the scenes stage's and the CLI's time goes, per unique file the stage saw."""
    import numpy as np
    from scenedetect import ContentDetector, detect

    from curation.media.ffmpeg import iter_frames, probe
    from stages.base import cpu_seconds
    from stages.scenes import make_detector

    p = m.params("scenes")
    rows = []
    # the CLI's fixed cost: interpreter, click, scenedetect and OpenCV imports (no video opened)
    starts = [run_timed([scenedetect_bin(), "--help"])[2] for _ in range(3)]
    for name in files:
        path = by_name[name]
        info = probe(str(path))
        c0 = cpu_seconds()
        frames = [np.array(f) for f in iter_frames(str(path), fps=info.fps, size=(p.decode_width, None),
                                                   src_size=(info.width, info.height), pix_fmt="bgr24",
                                                   threads=p.decode_threads, fast=p.fast_decode)]
        dec = cpu_seconds() - c0
        det = make_detector(p)
        c0 = cpu_seconds()
        for i, f in enumerate(frames):
            det.process_frame(i, f)
        detc = cpu_seconds() - c0
        shape = frames[0].shape if frames else None
        del frames
        c0 = cpu_seconds()
        detect(str(path), ContentDetector(), show_progress=False)
        api = cpu_seconds() - c0
        rows.append({"file": name, "footage_s": info.duration_s, "src": f"{info.width}x{info.height}",
                     "decoded": None if shape is None else f"{shape[1]}x{shape[0]}",
                     "decode_cpu_s": dec, "detector_cpu_s": detc, "cli_api_cpu_s": api})
    return {"cli_startup_cpu_s": sorted(starts)[1], "per_file": rows}


# ---------------------------------------------------------------------------------------------------

def fmt_row(name: str, n, footage: float, cpu: float, wall: float, floor_rate: float | None) -> str:
    rate = footage / cpu if cpu > 0 else float("inf")
    per = cpu / footage if footage > 0 else float("nan")
    x = per / floor_rate if floor_rate else float("nan")
    return (f"{name:<34} {str(n):>5} {footage:9.1f} {cpu:9.1f} {wall:9.1f} {rate:11.2f} {per:10.3f} {x:9.1f}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--footage", default=str(FOOTAGE), help="folder of the input files")
    ap.add_argument("--files", nargs="*", default=None, help="file names in --footage (default: every .mp4)")
    ap.add_argument("--repeat", type=int, default=2, help="take every file this many times")
    ap.add_argument("--manifest", default=None, help="manifest name or file (default: the default manifest)")
    ap.add_argument("--set", nargs="*", default=[], metavar="STAGE.KEY=VALUE", help="override stage params")
    ap.add_argument("--ray", action="store_true", help="also a real `curation run` with local Ray on the same input")
    ap.add_argument("--num-cpus", type=int, default=2, help="local Ray's CPUs for --ray")
    ap.add_argument("--no-diagnose", action="store_true", help="skip the scenes/CLI breakdown")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory (inputs, --ray output)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "pipeline.json"), help="results JSON")
    args = ap.parse_args()

    from curation.engine.config import load_manifest
    from curation.media.ffmpeg import probe

    def log(msg: str) -> None:
        print(msg, flush=True)

    footage = Path(args.footage)
    files = [footage / f for f in args.files] if args.files else sorted(footage.glob("*.mp4"))
    if not files:
        raise SystemExit(f"no .mp4 files in {footage}")
    m = load_manifest(args.manifest)
    raw = apply_overrides(m, args.set) if args.set else None
    work = Path(tempfile.mkdtemp(prefix="bench_pipeline_"))
    inputs = make_inputs(files, args.repeat, work / "input")
    by_name = {p.name: p for p in inputs}
    dur = {p.name: probe(str(p)).duration_s for p in inputs}
    total_s = sum(dur.values())
    warm = FOOTAGE / WARM_CLIP if (FOOTAGE / WARM_CLIP).exists() else None
    log(f"{len(files)} files x {args.repeat} = {len(inputs)} sources, {total_s:.1f} s of footage; manifest "
        f"{m.name}{' with ' + ' '.join(args.set) if args.set else ''}; {os.cpu_count()} cores, load average "
        f"{os.getloadavg()[0]:.1f}; work dir {work}")
    for p in inputs:  # into the page cache, so that nobody pays the first read
        p.read_bytes()

    log("floor: ffmpeg -threads 1 decode ...")
    floor = bench_floor(inputs, dur)
    floor_rate = floor["cpu_s"] / floor["footage_s"]
    log(f"  {floor['cpu_s']:.1f} CPU s, {floor['wall_s']:.1f} wall s")
    log("cli: scenedetect detect-content list-scenes ...")
    cli = bench_cli(inputs, dur, str(work))
    log(f"  {cli['cpu_s']:.1f} CPU s, {cli['wall_s']:.1f} wall s")
    log("stages (plain classes, no Ray):")
    stages, cuts, kept = bench_stages(m, inputs, warm, log)
    diag = None
    if not args.no_diagnose:
        log("scenes / CLI breakdown ...")
        uniq: dict[str, str] = {}
        for n in sorted(cuts):  # one copy of every file (r00_ first)
            uniq.setdefault(n.split("_", 1)[1], n)
        diag = diagnose_scenes(m, list(uniq.values()), by_name)

    ray_res = None
    if args.ray:
        from bench_memory import run_curation

        manifest_arg = args.manifest
        if raw is not None:
            import yaml

            mp = work / "manifest.yaml"
            mp.write_text(yaml.safe_dump(raw, sort_keys=False))
            manifest_arg = str(mp)
        log(f"ray: curation run --num-cpus {args.num_cpus} ...")
        ray_res = run_curation(str(work / "input"), str(work / "ray_out"), args.num_cpus, manifest_arg,
                               log_path=str(work / "ray_out.log"))
        fpath = work / "ray_out" / "audit" / "funnel.json"
        ray_res["funnel"] = json.loads(fpath.read_text()) if fpath.exists() else None
        ray_res["peak_worker_rss"] = max((p["peak_rss"] for p in ray_res["sampler"]["processes"] if p.get("is_worker")),
                                         default=0)
        log(f"  exit {ray_res['rc']}, {ray_res['wall_s']:.1f} wall s, {ray_res['tree_cpu_s']:.1f} CPU s (process tree)")
        if ray_res["rc"] != 0:
            log(Path(ray_res["log"]).read_text(errors="replace")[-3000:])

    # -- table -------------------------------------------------------------------------------------
    print()
    print(f"{'entry':<34} {'n':>5} {'footage s':>9} {'CPU s':>9} {'wall s':>9} {'fs / CPU-s':>11} "
          f"{'CPU-s / fs':>10} {'x floor':>9}")
    print(fmt_row("floor: ffmpeg -threads 1 decode", floor["n"], floor["footage_s"], floor["cpu_s"], floor["wall_s"],
                  floor_rate))
    print(fmt_row("PySceneDetect CLI (detect-content)", cli["n"], cli["footage_s"], cli["cpu_s"], cli["wall_s"],
                  floor_rate))
    e2e_cpu = e2e_wall = init_cpu = init_wall = 0.0
    for name, s in stages.items():
        print(fmt_row(f"stage {name}", s["in"], s["footage_s"], s["cpu_s"], s["wall_s"], floor_rate))
        e2e_cpu += s["cpu_s"]
        e2e_wall += s["wall_s"]
        init_cpu += s["init"]["cpu_s"]
        init_wall += s["init"]["wall_s"]
    print(fmt_row("end to end (sum of stages)", len(inputs), total_s, e2e_cpu, e2e_wall, floor_rate))
    print(fmt_row("  + init (model loads, warm-up)", len(inputs), total_s, e2e_cpu + init_cpu, e2e_wall + init_wall,
                  floor_rate))
    if ray_res and ray_res["rc"] == 0:
        fun_cpu = (ray_res["funnel"] or {}).get("totals", {}).get("cpu_s", 0.0)
        print(fmt_row("curation run (Ray): process tree", len(inputs), total_s, ray_res["tree_cpu_s"], ray_res["wall_s"],
                      floor_rate))
        print(fmt_row("curation run (Ray): funnel stages", len(inputs), total_s, fun_cpu, ray_res["wall_s"], floor_rate))
    print("(fs / CPU-s: footage-seconds per CPU-second; CPU-s / fs: its inverse; x floor: CPU-s / fs over the floor's "
          f"{floor_rate:.3f})")
    init_line = ", ".join(f"{n} {s['init']['cpu_s']:.1f}" for n, s in stages.items() if s["init"]["cpu_s"] >= 0.05)
    print(f"init CPU s (once per worker): {init_line}")

    # -- goals ---------------------------------------------------------------------------------------
    e2e_rate = total_s / e2e_cpu if e2e_cpu else float("inf")
    print(f"\nend to end: {e2e_rate:.2f} footage-s per CPU-s (goal >= {GOAL_END_TO_END:g}): "
          f"{'MET' if e2e_rate >= GOAL_END_TO_END else 'NOT MET'}; {e2e_cpu / floor['cpu_s']:.1f}x the decode floor's CPU "
          f"({stages['write']['out'] if 'write' in stages else len(kept)} clips kept, "
          f"{sum(k['end_s'] - k['start_s'] for k in kept):.1f} s)")
    if "skeleton" in stages and stages["skeleton"]["footage_s"]:
        sk = stages["skeleton"]["cpu_s"] / stages["skeleton"]["footage_s"]
        print(f"skeleton: {sk:.3f} CPU-s per footage-s (goal <= {GOAL_SKELETON:g}): "
              f"{'MET' if sk <= GOAL_SKELETON else 'NOT MET'} (accuracy per choice: bench/bench_skeleton.py)")
    for name, s in stages.items():
        if s["footage_s"]:
            print(f"  {name:<9} {s['cpu_s'] / s['footage_s']:.3f} CPU-s per footage-s = "
                  f"{s['cpu_s'] / s['footage_s'] / floor_rate:.1f}x the floor")
    cli_by = {x["file"]: x for x in cli["per_file"]}
    compared = []
    for name, c in sorted(cuts.items()):
        theirs = cli_by[name]["cuts"] if cli_by[name]["rc"] == 0 else None
        ok = c["cuts"] is not None and theirs is not None and same_cuts(c["cuts"], theirs)
        compared.append({"file": name, "ours": c["cuts"], "cli": theirs, "fps": c["fps"], "same": ok,
                         "ours_cpu_s": c["cpu_s"], "cli_cpu_s": cli_by[name]["cpu_s"],
                         "ours_wall_s": c["wall_s"], "cli_wall_s": cli_by[name]["wall_s"],
                         "cli_frames": cli_by[name]["frames"]})
    all_same = bool(compared) and all(x["same"] for x in compared)
    sc_cpu = sum(x["ours_cpu_s"] for x in compared)
    cl_cpu = sum(x["cli_cpu_s"] for x in compared)
    sc_wall = sum(x["ours_wall_s"] for x in compared)
    cl_wall = sum(x["cli_wall_s"] for x in compared)
    ratio = cl_cpu / sc_cpu if sc_cpu else float("nan")
    print(f"\nscenes vs PySceneDetect CLI on the {len(compared)} sources the stage saw:")
    print(f"  {'file':<50} {'fps':>6}  {'ours (frames)':<28} {'CLI (frames)':<28} same  CPU ours / CLI")
    for x in compared:
        if x["file"].startswith("r00_") or not x["same"]:
            print(f"  {x['file'][:50]:<50} {x['fps']:6.2f}  {str(x['ours'])[:28]:<28} {str(x['cli'])[:28]:<28} "
                  f"{'yes' if x['same'] else 'NO ':<4}  {x['ours_cpu_s']:5.2f} / {x['cli_cpu_s']:5.2f}")
    print(f"  same cuts (+-1 frame) on every file: {'yes' if all_same else 'NO'}; speed: CLI/scenes CPU {ratio:.2f}x, "
          f"wall {cl_wall / sc_wall if sc_wall else float('nan'):.2f}x (goal >= {GOAL_SCENES_VS_CLI:g}x with the same "
          f"cuts): {'MET' if all_same and ratio >= GOAL_SCENES_VS_CLI else 'NOT MET'}")
    if diag:
        print(f"\nbreakdown (one copy of each file; CPU s): CLI start-up (`scenedetect --help`) "
              f"{diag['cli_startup_cpu_s']:.2f} per call")
        print(f"  {'file':<48} {'src':>9} {'decoded':>9} {'stage':>6} {'decode':>7} {'detect':>7} {'CLI':>6} "
              f"{'CLI API':>8} {'floor':>6}")
        fl_by = {x["file"]: x for x in floor["per_file"]}
        for d in diag["per_file"]:
            c = cuts[d["file"]]
            print(f"  {d['file'][:48]:<48} {d['src']:>9} {str(d['decoded']):>9} {c['cpu_s']:6.2f} {d['decode_cpu_s']:7.2f} "
                  f"{d['detector_cpu_s']:7.2f} {cli_by[d['file']]['cpu_s']:6.2f} {d['cli_api_cpu_s']:8.2f} "
                  f"{fl_by[d['file']]['cpu_s']:6.2f}")
        tot = {k: sum(d[k] for d in diag["per_file"]) for k in ("decode_cpu_s", "detector_cpu_s", "cli_api_cpu_s",
                                                                 "footage_s")}
        st_tot = sum(cuts[d["file"]]["cpu_s"] for d in diag["per_file"])
        print(f"  total {tot['footage_s']:.1f} footage s: stage {st_tot:.2f} = decode {tot['decode_cpu_s']:.2f} + "
              f"detector {tot['detector_cpu_s']:.2f} + rest {st_tot - tot['decode_cpu_s'] - tot['detector_cpu_s']:.2f}; "
              f"CLI {sum(cli_by[d['file']]['cpu_s'] for d in diag['per_file']):.2f} = start-up "
              f"{diag['cli_startup_cpu_s'] * len(diag['per_file']):.2f} + API {tot['cli_api_cpu_s']:.2f} + rest")

    result = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "cores": os.cpu_count(),
        "load_average": os.getloadavg(), "manifest": m.name, "overrides": args.set, "repeat": args.repeat,
        "files": [f.name for f in files], "sources": len(inputs), "footage_s": total_s,
        "floor": floor, "cli": cli,
        "stages": stages,
        "end_to_end": {"footage_s": total_s, "cpu_s": e2e_cpu, "wall_s": e2e_wall, "init_cpu_s": init_cpu,
                       "init_wall_s": init_wall, "footage_s_per_cpu_s": e2e_rate,
                       "x_floor": (e2e_cpu / total_s) / floor_rate, "goal_footage_s_per_cpu_s": GOAL_END_TO_END,
                       "goal_met": e2e_rate >= GOAL_END_TO_END, "kept": kept},
        "scenes_vs_cli": {"files": compared, "same_cuts_all": all_same, "cpu_ratio": ratio,
                          "wall_ratio": cl_wall / sc_wall if sc_wall else None, "goal_ratio": GOAL_SCENES_VS_CLI,
                          "goal_met": all_same and ratio >= GOAL_SCENES_VS_CLI},
        "scenes_breakdown": diag,
        "ray": None if ray_res is None else {k: v for k, v in ray_res.items() if k != "sampler"} | {
            "processes": ray_res["sampler"]["processes"]},
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1, default=float))
    print(f"\nresults: {args.out}")
    if args.keep:
        print(f"kept: {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
