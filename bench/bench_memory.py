"""Peak memory of every Ray worker and of the driver while `curation run` (local Ray, default manifest) curates
one long video: by default one hour of ffmpeg's testsrc2 pattern (640x360, 25 fps) with looped real speech.

    .venv/bin/python bench/bench_memory.py [--minutes 60] [--num-cpus 2] [--keep] [--out bench/results/memory.json]

The video is made with ffmpeg (libx264 ultrafast + AAC) in --workdir; with --keep an existing one is reused
(and kept, with the run's output directory), otherwise both are removed at the end. While the run goes, every
--interval seconds every process descending from the `curation run` driver is read from /proc (psutil is not
a dependency): resident set size (VmRSS, and its anonymous part RssAnon, which leaves out file pages and the
Ray object store's shared memory) and CPU time. A Ray worker is a process whose title ever started with
"ray::"; the ffmpeg processes a worker starts are counted with it ("incl. children"). Printed: the peak per
worker against the goal (under 2 GiB per worker), the driver's and Ray's own processes' peaks, wall time,
CPU time, and the run's funnel. All of it goes to the JSON file too.

testsrc2 has no face, so after scenes the person stage rejects every candidate clip: this measures scale
(one source of an hour: probe, a one-hour scene decode, 72 clips of 50 s through person). `--loop-video FILE`
loops a real clip's picture instead (every stage then runs, and a run takes much longer)."""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("CURATION_SHARED", ROOT.parent / "shared"))
FOOTAGE = Path(os.environ.get("CURATION_FOOTAGE", SHARED / "footage"))
WEIGHTS = Path(os.environ.get("CURATION_WEIGHTS", SHARED / "weights"))
GOAL_WORKER_BYTES = 2 * 1024**3

_CLK = os.sysconf("SC_CLK_TCK")
RAY_AGENTS = ("ray::DashboardAgent", "ray::RuntimeEnvAgent")  # Ray's per-node agents: not workers


def role(titles: list[str]) -> str:
    """What a process was: the Ray titles it had (method suffixes dropped), else its program's name."""
    names: list[str] = []
    for t in titles:
        if not t.startswith("ray::") or t == "ray::IDLE":
            continue
        t = t[5:]
        head, _, tail = t.rpartition(")")
        if "." in tail:  # MapWorker(...).__init__, ActorLocationTracker.get_actor_locations
            t = head + ")" + tail.split(".", 1)[0] if head else tail.split(".", 1)[0]
        if t not in names:
            names.append(t)
    names = [n for n in names if not any(o != n and o.startswith(n) for o in names)]  # titles read mid-write
    if names:
        return ", ".join(names)
    if "ray::IDLE" in titles:
        return "IDLE"
    for part in (titles[0] if titles else "").split():
        if "/" in part and not part.endswith("python"):
            return part.rsplit("/", 1)[-1][:40]
    return (titles[0] if titles else "")[:40]


# ---------------------------------------------------------------------------------------------------
# /proc sampling (also used by bench_pipeline.py for the CPU time of a whole Ray run)

def _read_proc(pid: int) -> dict | None:
    """ppid, title, memory (bytes) and CPU seconds of one process; None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read().decode("utf-8", "replace")
        fields = stat[stat.rindex(")") + 2:].split()
        with open(f"/proc/{pid}/status", "rb") as f:
            status = f.read().decode("utf-8", "replace")
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmd = f.read().replace(b"\0", b" ").decode("utf-8", "replace").strip()
    except (OSError, ValueError):
        return None
    mem = {}
    for line in status.splitlines():
        k, _, v = line.partition(":")
        if k in ("VmRSS", "RssAnon", "RssFile", "RssShmem"):
            mem[k] = int(v.split()[0]) * 1024
    return {"ppid": int(fields[1]), "cmd": cmd or stat[stat.index("(") + 1:stat.rindex(")")],
            "rss": mem.get("VmRSS", 0), "anon": mem.get("RssAnon", 0), "shmem": mem.get("RssShmem", 0),
            "cpu_self": (int(fields[11]) + int(fields[12])) / _CLK,
            "cpu_children": (int(fields[13]) + int(fields[14])) / _CLK}


def _all_ppids() -> dict[int, int]:
    out = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                stat = f.read().decode("utf-8", "replace")
            out[int(name)] = int(stat[stat.rindex(")") + 2:].split()[1])
        except (OSError, ValueError, IndexError):
            continue
    return out


class ProcSampler(threading.Thread):
    """Every `interval` s: every live descendant of `root` (and every process seen before that is still
    alive, in case it was re-parented), its RSS and CPU; peaks and last values per pid."""

    def __init__(self, root: int, interval: float = 0.5):
        super().__init__(daemon=True, name="proc-sampler")
        self.root = root
        self.interval = interval
        self.procs: dict[int, dict] = {}
        self.samples = 0
        self.timeline: list[tuple[float, int, int]] = []  # (t, sum of worker RSS, driver RSS)
        self._halt = threading.Event()
        self.t0 = time.time()

    def stop(self) -> None:
        self._halt.set()
        self.join(10)

    def run(self) -> None:
        while True:
            self.sample()
            if self._halt.wait(self.interval):
                break

    def sample(self) -> None:
        ppids = _all_ppids()
        children: dict[int, list[int]] = {}
        for pid, pp in ppids.items():
            children.setdefault(pp, []).append(pid)
        live = {self.root} if self.root in ppids else set()
        todo = list(live)
        while todo:
            for c in children.get(todo.pop(), []):
                if c not in live:
                    live.add(c)
                    todo.append(c)
        live |= {p for p in self.procs if p in ppids}
        snap = {}
        for pid in live:
            info = _read_proc(pid)
            if info is not None:
                snap[pid] = info
        now = time.time() - self.t0
        for pid, info in snap.items():
            p = self.procs.setdefault(pid, {"pid": pid, "ppid": info["ppid"], "titles": [], "first_s": now,
                                            "peak_rss": 0, "peak_anon": 0, "peak_rss_tree": 0})
            title = info["cmd"][:120]
            if title not in p["titles"] and len(p["titles"]) < 12:
                p["titles"].append(title)
            p["is_worker"] = p.get("is_worker", False) or (info["cmd"].startswith("ray::")
                                                            and not info["cmd"].startswith(RAY_AGENTS))
            p["last_s"] = now
            p["peak_rss"] = max(p["peak_rss"], info["rss"])
            p["peak_anon"] = max(p["peak_anon"], info["anon"])
            p["cpu_self"] = info["cpu_self"]
            p["cpu_children"] = info["cpu_children"]
            # this process and its live descendants together (a worker with the ffmpeg it runs)
            tree, todo = info["rss"], list(children.get(pid, []))
            while todo:
                c = todo.pop()
                if c in snap:
                    tree += snap[c]["rss"]
                todo.extend(children.get(c, []))
            p["peak_rss_tree"] = max(p["peak_rss_tree"], tree)
        self.samples += 1
        workers = sum(snap[p]["rss"] for p in snap if self.procs[p].get("is_worker"))
        self.timeline.append((round(now, 2), workers, snap.get(self.root, {}).get("rss", 0)))

    # -- summaries ---------------------------------------------------------------------------------
    def kind(self, pid: int) -> str:
        p = self.procs[pid]
        if pid == self.root:
            return "driver"
        if p.get("is_worker"):
            return "worker"
        parent = self.procs.get(p["ppid"])
        if parent is not None and (parent.get("is_worker") or p["ppid"] == self.root) and "ray" not in " ".join(p["titles"]).lower():
            return "tool"  # ffmpeg/ffprobe started by a worker (or the driver)
        return "ray_system"

    def summary(self) -> dict:
        rows = []
        for pid, p in sorted(self.procs.items()):
            rows.append({**p, "kind": self.kind(pid), "role": role(p["titles"])})
        # CPU: own time of the driver, Ray's processes and the workers, plus the waited-for children of the
        # workers (their ffmpeg runs); not the children of raylet/driver (that would count workers twice)
        cpu = 0.0
        for r in rows:
            if r["kind"] == "tool":
                continue
            cpu += r.get("cpu_self", 0.0)
            if r["kind"] == "worker":
                cpu += r.get("cpu_children", 0.0)
        return {"samples": self.samples, "interval_s": self.interval, "processes": rows, "tree_cpu_s": cpu,
                "timeline": self.timeline}


def gib(b: float) -> str:
    return f"{b / 1024**3:.2f}"


def print_memory(summary: dict) -> dict:
    """Print per-worker peaks; return the headline figures."""
    rows = summary["processes"]
    workers = [r for r in rows if r["kind"] == "worker"]
    print(f"\n{'pid':>7} {'kind':<10} {'peak RSS GiB':>12} {'anon GiB':>9} {'+ descendants':>14} {'CPU s':>8}  "
          f"{'alive s':>8}  role")
    for r in sorted(rows, key=lambda r: (r["kind"] != "driver", r["kind"] != "worker", -r["peak_rss"])):
        if r["kind"] == "tool" and r["peak_rss"] < 200 * 1024**2:
            continue
        print(f"{r['pid']:>7} {r['kind']:<10} {gib(r['peak_rss']):>12} {gib(r['peak_anon']):>9} "
              f"{gib(r['peak_rss_tree']):>14} {r.get('cpu_self', 0) + (r.get('cpu_children', 0) if r['kind'] == 'worker' else 0):8.1f}"
              f"  {r['last_s'] - r['first_s']:8.1f}  {r['role']}")
    tools = [r for r in rows if r["kind"] == "tool"]
    head = {
        "workers": len(workers),
        "peak_worker_rss": max((r["peak_rss"] for r in workers), default=0),
        "peak_worker_anon": max((r["peak_anon"] for r in workers), default=0),
        "peak_worker_rss_incl_children": max((r["peak_rss_tree"] for r in workers), default=0),
        "peak_driver_rss": max((r["peak_rss"] for r in rows if r["kind"] == "driver"), default=0),
        "peak_ray_system_rss": max((r["peak_rss"] for r in rows if r["kind"] == "ray_system"), default=0),
        "peak_tool_rss": max((r["peak_rss"] for r in tools), default=0),
        "tools_seen": len(tools),
    }
    ok = head["peak_worker_rss"] < GOAL_WORKER_BYTES
    print(f"\nworkers: {head['workers']}; peak RSS per worker {gib(head['peak_worker_rss'])} GiB (anonymous "
          f"{gib(head['peak_worker_anon'])} GiB; with its ffmpeg children {gib(head['peak_worker_rss_incl_children'])} GiB)"
          f" -> goal < 2 GiB per worker: {'MET' if ok else 'NOT MET'}")
    print(f"driver peak RSS {gib(head['peak_driver_rss'])} GiB; largest Ray system process {gib(head['peak_ray_system_rss'])} GiB;"
          f" largest ffmpeg/ffprobe seen {gib(head['peak_tool_rss'])} GiB ({head['tools_seen']} sampled)")
    head["goal_met"] = ok
    return head


def curation_bin() -> str:
    p = ROOT / ".venv" / "bin" / "curation"
    return str(p) if p.exists() else "curation"


def run_curation(input_path: str, output: str, num_cpus: int, manifest: str | None = None,
                 interval: float = 0.5, log_path: str | None = None, progress_s: float = 60.0) -> dict:
    """`curation run` with local Ray as a child process, sampled; wall, CPU and the sampler's summary."""
    cmd = [curation_bin(), "run", "--input", input_path, "--output", output, "--num-cpus", str(num_cpus)]
    if manifest:
        cmd += ["--manifest", manifest]
    env = dict(os.environ, CURATION_WEIGHTS=str(WEIGHTS), RAY_DEDUP_LOGS="0")
    env.pop("RAY_ADDRESS", None)
    log_path = log_path or os.path.join(output + ".log")
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    w0 = time.perf_counter()
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=str(ROOT))
        sampler = ProcSampler(proc.pid, interval)
        sampler.start()
        last = time.time()
        while proc.poll() is None:
            time.sleep(0.5)
            if progress_s and time.time() - last >= progress_s:
                last = time.time()
                procs = sampler.procs.values()
                top = max((p["peak_rss"] for p in procs if p.get("is_worker")), default=0)
                print(f"  ... {time.perf_counter() - w0:6.0f} s, {sum(1 for p in procs if p.get('is_worker'))} workers "
                      f"seen, peak worker RSS so far {gib(top)} GiB", flush=True)
        sampler.stop()
    wall = time.perf_counter() - w0
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    summ = sampler.summary()
    return {"cmd": cmd, "rc": proc.returncode, "wall_s": wall, "log": log_path,
            "children_rusage_cpu_s": (r1.ru_utime + r1.ru_stime) - (r0.ru_utime + r0.ru_stime),
            "children_maxrss_bytes": r1.ru_maxrss * 1024, "sampler": summ,
            "tree_cpu_s": summ["tree_cpu_s"]}


def make_video(path: Path, minutes: float, audio: Path, loop_video: Path | None) -> float:
    t0 = time.perf_counter()
    if loop_video:
        vin = ["-stream_loop", "-1", "-i", str(loop_video)]
        vf = ["-vf", "scale=640:360:force_original_aspect_ratio=decrease:force_divisible_by=2,fps=25"]
    else:
        vin = ["-f", "lavfi", "-i", "testsrc2=size=640x360:rate=25"]
        vf = []
    tmp = path.with_suffix(".part.mp4")
    cmd = ["ffmpeg", "-nostdin", "-v", "error", "-y", *vin, "-stream_loop", "-1", "-i", str(audio),
           "-map", "0:v:0", "-map", "1:a:0", *vf, "-t", f"{minutes * 60:.3f}",
           "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p",
           "-c:a", "aac", "-b:a", "64k", "-ac", "1", "-ar", "16000", str(tmp)]
    subprocess.run(cmd, check=True)
    os.replace(tmp, path)
    return time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=60.0, help="length of the generated video")
    ap.add_argument("--num-cpus", type=int, default=2, help="local Ray's CPUs (curation run --num-cpus)")
    ap.add_argument("--manifest", default=None, help="manifest name or file (default: the default manifest)")
    ap.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "talkcurate_bench_memory"),
                    help="where the video and the run's output go")
    ap.add_argument("--keep", action="store_true", help="reuse the video if present; keep it and the output")
    ap.add_argument("--interval", type=float, default=0.5, help="sampling interval, seconds")
    ap.add_argument("--audio", default=str(FOOTAGE / "F3_hdtf_rd_radio31_8s.wav"), help="speech to loop")
    ap.add_argument("--loop-video", default=None, help="loop this clip's picture instead of testsrc2")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "memory.json"), help="results JSON")
    args = ap.parse_args()

    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    tag = "testsrc2" if not args.loop_video else Path(args.loop_video).stem[:24]
    video = work / f"{tag}_{args.minutes:g}min.mp4"
    gen_s = None
    if args.keep and video.exists():
        print(f"reusing {video}")
    else:
        print(f"making {video} ({args.minutes:g} min, 640x360 25 fps, speech looped from {Path(args.audio).name}) ...",
              flush=True)
        gen_s = make_video(video, args.minutes, Path(args.audio), Path(args.loop_video) if args.loop_video else None)
        print(f"  made in {gen_s:.0f} s, {video.stat().st_size / 1e6:.0f} MB")
    out = work / f"out_{time.strftime('%Y%m%d_%H%M%S')}"
    print(f"curation run --input {video} --output {out} --num-cpus {args.num_cpus} "
          f"(sampling every {args.interval:g} s) ...", flush=True)
    res = run_curation(str(video), str(out), args.num_cpus, args.manifest, args.interval,
                       log_path=str(out) + ".log")
    print(f"exit {res['rc']}; wall {res['wall_s']:.0f} s for {args.minutes * 60:.0f} s of footage "
          f"({args.minutes * 60 / res['wall_s']:.2f} footage-s per wall-s); CPU of the process tree "
          f"{res['tree_cpu_s']:.0f} s ({args.minutes * 60 / max(res['tree_cpu_s'], 1e-9):.2f} footage-s per CPU-s); "
          f"children rusage of `curation run` {res['children_rusage_cpu_s']:.0f} s")
    head = print_memory(res["sampler"])
    funnel = None
    fpath = out / "audit" / "funnel.json"
    if fpath.exists():
        funnel = json.loads(fpath.read_text())
        sys.path.insert(0, str(ROOT))
        from curation.report.terminal import print_funnel

        print()
        print_funnel(funnel)
    if res["rc"] != 0:
        print("curation run failed; the end of its log:")
        print(Path(res["log"]).read_text(errors="replace")[-4000:])
    result = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "cores": os.cpu_count(),
        "minutes": args.minutes, "video": str(video), "video_bytes": video.stat().st_size, "generate_s": gen_s,
        "num_cpus": args.num_cpus, "manifest": args.manifest or "default", "rc": res["rc"],
        "wall_s": res["wall_s"], "tree_cpu_s": res["tree_cpu_s"], "children_rusage_cpu_s": res["children_rusage_cpu_s"],
        "goal_worker_bytes": GOAL_WORKER_BYTES, **head, "funnel": funnel, "processes": res["sampler"]["processes"],
        "timeline": res["sampler"]["timeline"][::max(1, len(res["sampler"]["timeline"]) // 2000)],
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1, default=float))
    print(f"\nresults: {args.out}")
    if not args.keep:
        shutil.rmtree(out, ignore_errors=True)
        with_log = Path(str(out) + ".log")
        if res["rc"] == 0:
            with_log.unlink(missing_ok=True)
        video.unlink(missing_ok=True)
    return 0 if res["rc"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
