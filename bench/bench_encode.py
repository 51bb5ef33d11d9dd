"""The write stage's encoder preset by measurement: x264 CPU against quality at equal size, at the manifest's
output size (video.max_side), on clips of the shared footage.

    .venv/bin/python bench/bench_encode.py [--clips ...] [--presets ultrafast superfast veryfast faster fast medium]
                                           [--max-side 640] [--crf 20]

Per clip: the reference is the clip as the write stage sees it (25 fps, scaled to max_side) stored losslessly
(FFV1); the bitrate is the one `--crf` gives with the veryfast preset (today's). Every preset then encodes
the reference at that bitrate (one-pass ABR, -b:v, so every preset spends the same bytes), and the result is
compared with the reference by ffmpeg's psnr and ssim filters. Also printed: each preset at `--crf` (the
write stage's actual mode: size and CPU at equal CRF). CPU seconds are the ffmpeg children's (user+sys),
per footage second; the machine may be shared, so wall figures are noisy and not printed."""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

CLIPS = ["S01_LatentSync_man-black-sweater_studio-talk_hevc_20s.mp4",
         "S03_Wav2Lip-GFPGAN_woman-blazer_blue-backdrop_1080p_7s.mp4",
         "A7_liveportrait_s18_woman_medium_shot_9s.mp4", "E1_liveportrait_d6_single_face_34s.mp4"]


def child_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def run(cmd: list[str]) -> tuple[str, float]:
    c0 = child_cpu()
    p = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return p.stderr, child_cpu() - c0


def quality(dist: str, ref: str) -> tuple[float, float]:
    err, _ = run(["ffmpeg", "-nostdin", "-i", dist, "-i", ref, "-lavfi", "[0:v][1:v]psnr;[0:v][1:v]ssim",
                  "-f", "null", "-"])
    psnr = float(re.findall(r"PSNR .*? average:([0-9.inf]+)", err)[-1])
    ssim = float(re.findall(r"SSIM .*? All:([0-9.]+)", err)[-1])
    return psnr, ssim


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--footage", default=os.environ.get("CURATION_FOOTAGE", str(ROOT.parent / "shared/footage")))
    ap.add_argument("--clips", nargs="+", default=CLIPS)
    ap.add_argument("--presets", nargs="+", default=["ultrafast", "superfast", "veryfast", "faster", "fast", "medium"])
    ap.add_argument("--max-side", type=int, default=640)
    ap.add_argument("--crf", type=int, default=20)
    args = ap.parse_args()

    from curation.media.ffmpeg import clip_size, probe

    res: dict = {p: {"abr_cpu": 0.0, "psnr": [], "ssim": [], "crf_cpu": 0.0, "crf_bytes": 0, "crf_psnr": []}
                 for p in args.presets}
    total_s = 0.0
    with tempfile.TemporaryDirectory() as td:
        for name in args.clips:
            src = str(Path(args.footage) / name)
            info = probe(src)
            w, h = clip_size(info.width, info.height, args.max_side)
            ref = os.path.join(td, "ref.mkv")
            run(["ffmpeg", "-nostdin", "-v", "error", "-y", "-i", src, "-an", "-vf",
                 f"fps=25,scale={w}:{h},setsar=1", "-pix_fmt", "yuv420p", "-c:v", "ffv1", ref])
            dur = probe(ref).duration_s
            total_s += dur
            base = os.path.join(td, "base.mp4")
            run(["ffmpeg", "-nostdin", "-v", "error", "-y", "-i", ref, "-c:v", "libx264", "-preset", "veryfast",
                 "-crf", str(args.crf), base])
            kbps = os.path.getsize(base) * 8 / dur / 1000
            line = [f"{name[:40]:40s} {w}x{h} {dur:5.1f} s, veryfast crf {args.crf}: {kbps:.0f} kb/s"]
            for preset in args.presets:
                out = os.path.join(td, f"{preset}.mp4")
                _, cpu = run(["ffmpeg", "-nostdin", "-v", "error", "-y", "-threads", "1", "-i", ref, "-c:v", "libx264",
                              "-preset", preset, "-b:v", f"{kbps:.0f}k", "-maxrate", f"{kbps * 1.5:.0f}k",
                              "-bufsize", f"{kbps * 2:.0f}k", "-threads", "1", out])
                psnr, ssim = quality(out, ref)
                _, ccpu = run(["ffmpeg", "-nostdin", "-v", "error", "-y", "-threads", "1", "-i", ref, "-c:v", "libx264",
                               "-preset", preset, "-crf", str(args.crf), "-threads", "1", out])
                cpsnr, _ = quality(out, ref)
                r = res[preset]
                r["abr_cpu"] += cpu
                r["psnr"].append((dur, psnr))
                r["ssim"].append((dur, ssim))
                r["crf_cpu"] += ccpu
                r["crf_bytes"] += os.path.getsize(out)
                r["crf_psnr"].append((dur, cpsnr))
                line.append(f"  {preset}: {psnr:.2f} dB {ssim:.4f}")
            print(" ".join(line), flush=True)
    print(f"\n{total_s:.1f} s of footage at max side {args.max_side}; encode CPU-s per footage-s (decode of the "
          f"lossless reference included, -threads 1)")
    print(f"{'preset':10s} {'ABR cpu':>8s} {'PSNR dB':>8s} {'SSIM':>7s} | {'CRF cpu':>8s} {'kb/s':>6s} {'PSNR dB':>8s}")
    summary = {}
    for preset, r in res.items():
        wavg = lambda xs: sum(d * v for d, v in xs) / sum(d for d, _ in xs)
        row = {"abr_cpu_per_s": r["abr_cpu"] / total_s, "psnr": wavg(r["psnr"]), "ssim": wavg(r["ssim"]),
               "crf_cpu_per_s": r["crf_cpu"] / total_s, "crf_kbps": r["crf_bytes"] * 8 / total_s / 1000,
               "crf_psnr": wavg(r["crf_psnr"])}
        summary[preset] = row
        print(f"{preset:10s} {row['abr_cpu_per_s']:8.3f} {row['psnr']:8.2f} {row['ssim']:7.4f} | "
              f"{row['crf_cpu_per_s']:8.3f} {row['crf_kbps']:6.0f} {row['crf_psnr']:8.2f}")
    out = ROOT / "bench/results/bench_encode.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"max_side": args.max_side, "crf": args.crf, "presets": summary}, indent=1))


if __name__ == "__main__":
    main()
