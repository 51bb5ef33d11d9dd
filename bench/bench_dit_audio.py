"""Proof that the audio drives the mouth: train the DiT on a few kept clips until it reconstructs them,
then generate each clip from its first frame with its own audio and with another clip's audio, and
compare both with the real clip, over the whole frame and over the mouth.

    python bench/bench_dit_audio.py --shards OUT/shards [--clips 3] [--seconds 2] [--steps 1500]

1. Clips: the kept clips of the curation shards with a pose.npz, at most one per source (so a swapped
   audio is another person's speech), those with the widest mouth at the training resolution first. Their
   first `--seconds` are cut (media.ffmpeg.encode_clip) into a shard of their own, from which the
   training view is prepared exactly as `curation prepare-train` does.
2. Model: `BENCH_CONFIG`, tiny's model at batch 8, trained with `train()` (the loop `curation train`
   runs) for `--steps` steps, without mirroring.
3. For each clip: `sample.generate` from the real first frame with (a) its own audio, (b) the next clip's
   audio (same length, same noise seed), and (c) a baseline without any model: the first frame repeated.
   PSNR against the real frames (the view's, i.e. the training target) over all frames, on the whole
   frame and on the mouth: per frame the box of the mouth keypoints (COCO-WholeBody face points 23..90,
   mouth = the last 20 face points, 71..90, score > 0.3) mapped into the square crop and grown by
   `--mouth-margin` on every side; frames without a mouth box are left out of the mouth figure.

It prints one row per clip and the mean, and whether own audio beats swapped audio on the mouth (the
mean, and on how many clips). Wall time on a shared 2-core machine is noisy. Writes JSON to
bench/results/dit_audio.json.
"""

import argparse
import glob
import json
import math
import os
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import webdataset as wds  # noqa: E402

from curation.dit.configs import CONFIGS, FPS  # noqa: E402
from curation.dit.data import read_wav  # noqa: E402
from curation.dit.sample import generate, load_model  # noqa: E402
from curation.dit.train import train  # noqa: E402
from curation.dit.view import prepare_view, scan_view  # noqa: E402
from curation.formats import pose_npz  # noqa: E402
from curation.formats.wholebody import FACE  # noqa: E402
from curation.media.ffmpeg import encode_clip, temp_dir  # noqa: E402

MOUTH = slice(FACE.stop - 20, FACE.stop)  # the last 20 of the 68 face points: outer and inner lips
MIN_SCORE = 0.3

# tiny's model (32 px, 8 frames, dim 64, depth 4, 256 tokens) at batch 8, without mirroring (the mouth box
# is the real clip's): about 0.2 CPU-s a step with one thread (300 steps took 62 CPU-s on the loaded 2-core
# machine), so the default 1500 steps cost about five CPU-minutes; wall time there was 18 minutes under a
# load average of 8 to 24.
BENCH_CONFIG = replace(CONFIGS["tiny"], name="tiny-b8", batch_size=8, hflip=0.0, num_workers=1, log_every=50,
                       ckpt_every=50)


def mouth_boxes(kpts: np.ndarray, width: int, height: int, size: int, margin: float) -> list:
    """Per frame, the mouth box (x0, y0, x1, y1) in pixels of the size x size centre crop, or None."""
    side = min(width, height)
    x_off, y_off = (width - side) / 2, (height - side) / 2
    out = []
    for k in kpts[:, 0, MOUTH]:
        ok = k[:, 2] > MIN_SCORE
        if ok.sum() < 10:
            out.append(None)
            continue
        x = (k[ok, 0] - x_off) * size / side
        y = (k[ok, 1] - y_off) * size / side
        w, h = x.max() - x.min(), y.max() - y.min()
        x0, x1 = math.floor(x.min() - margin * w), math.ceil(x.max() + margin * w)
        y0, y1 = math.floor(y.min() - margin * h), math.ceil(y.max() + margin * h)
        x0, y0, x1, y1 = max(0, x0), max(0, y0), min(size, x1), min(size, y1)
        out.append((x0, y0, x1, y1) if x1 > x0 and y1 > y0 else None)
    return out


def psnr(a: np.ndarray, b: np.ndarray, boxes: list | None = None) -> float:
    """PSNR (dB, peak 255) of uint8 frames a against b, over whole frames or over each frame's box."""
    if boxes is None:
        se, n = ((a.astype(np.float64) - b) ** 2).sum(), a.size
    else:
        se, n = 0.0, 0
        for t, box in enumerate(boxes):
            if box is None:
                continue
            x0, y0, x1, y1 = box
            d = a[t, y0:y1, x0:x1].astype(np.float64) - b[t, y0:y1, x0:x1]
            se, n = se + (d ** 2).sum(), n + d.size
    return 10 * math.log10(255.0 ** 2 / (se / n))


def pick_clips(shards: str, cfg, n: int, frames: int, margin: float) -> list[dict]:
    cands = []
    urls = sorted(glob.glob(os.path.join(shards, "*.tar")))
    for s in wds.WebDataset(urls, shardshuffle=False, empty_check=False):
        if not all(k in s for k in ("mp4", "wav", "json", "pose.npz")):
            continue
        meta = json.loads(s["json"])
        kpts = pose_npz.decode(s["pose.npz"])["keypoints_info"][:frames]
        if len(kpts) < frames:
            continue
        boxes = mouth_boxes(kpts, int(meta["width"]), int(meta["height"]), cfg.resolution, margin)
        found = [b for b in boxes if b is not None]
        if len(found) < 0.9 * frames:
            continue
        widths = [b[2] - b[0] for b in found]
        cands.append({"key": s["__key__"], "source": os.path.basename(str(meta.get("source", s["__key__"]))),
                      "mp4": s["mp4"], "boxes": boxes, "mouth_px": float(np.median(widths))})
    cands.sort(key=lambda c: -c["mouth_px"])
    picked, sources = [], set()
    for c in cands:
        if c["source"] not in sources:
            picked.append(c)
            sources.add(c["source"])
    if len(picked) < 2:
        raise SystemExit(f"need at least 2 kept clips of {frames} frames with a mouth in their pose.npz, "
                         f"from different sources; found {len(picked)} in {shards}")
    return picked[:n]


def write_cut_shard(clips: list[dict], seconds: float, out_dir: str) -> None:
    """The clips' first `seconds`, cut and normalised by the pipeline's own writer, as curation shards."""
    os.makedirs(out_dir)
    with wds.ShardWriter(os.path.join(out_dir, "shard-%06d.tar"), maxcount=1000, verbose=0) as sink, \
            temp_dir() as td:
        for c in clips:
            src = os.path.join(td, "clip.mp4")
            with open(src, "wb") as f:
                f.write(c["mp4"])
            mp4, wav, n = encode_clip(src, 0.0, seconds, fps=FPS)
            c["wav"] = wav
            sink.write({"__key__": c["key"], "mp4": mp4, "wav": wav,
                        "json": json.dumps({"key": c["key"], "n_frames": n, "fps": FPS}).encode()})


def view_frames(view: str, cfg) -> dict[str, np.ndarray]:
    paths, clips = scan_view(view, cfg)
    maps = [np.memmap(p, np.uint8, mode="r") for p in paths]
    r = cfg.resolution
    return {c.key: np.array(maps[c.shard][c.frames_offset:c.frames_offset + c.n_frames * r * r * 3])
            .reshape(c.n_frames, r, r, 3) for c in clips}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shards", required=True, help="the shards/ folder of a curation run (with pose.npz)")
    ap.add_argument("--clips", type=int, default=3, help="clips to train on (default 3)")
    ap.add_argument("--seconds", type=float, default=2.0, help="first seconds of each clip used (default 2)")
    ap.add_argument("--steps", type=int, default=1500, help="training steps (default 1500)")
    ap.add_argument("--sample-steps", type=int, default=10, help="Euler steps when sampling (default 10)")
    ap.add_argument("--cfg", type=float, nargs="+", default=[1.0, 3.0],
                    help="guidance scales to sample with (default: 1, i.e. none, and 3, the config's)")
    ap.add_argument("--mouth-margin", type=float, default=0.25, help="mouth box growth per side (default 0.25)")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch intra-op threads")
    ap.add_argument("--keep", metavar="DIR", help="keep the view and the run in DIR (default: a temp dir)")
    ap.add_argument("--eval-only", action="store_true",
                    help="evaluate the last checkpoint of a run kept with --keep DIR instead of training")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "dit_audio.json"))
    args = ap.parse_args()
    if args.eval_only and not args.keep:
        ap.error("--eval-only needs --keep DIR")
    torch.set_num_threads(args.threads)
    cfg = replace(BENCH_CONFIG, steps=args.steps)
    frames = int(round(args.seconds * FPS))
    t_start = time.perf_counter()

    with tempfile.TemporaryDirectory(prefix="bench-dit-audio-") as td:
        work = args.keep or td
        clips = pick_clips(args.shards, cfg, args.clips, frames, args.mouth_margin)
        names = [f"{c['key']} (mouth {c['mouth_px']:.0f} px)" for c in clips]
        print(f"clips: {', '.join(names)}", flush=True)
        view = os.path.join(work, "view")
        t0 = time.perf_counter()
        if args.eval_only:  # the clips, view and checkpoint of an earlier run kept in --keep
            wavs = {s["__key__"]: s["wav"] for s in wds.WebDataset(
                sorted(glob.glob(os.path.join(work, "shards", "*.tar"))), shardshuffle=False, empty_check=False)}
            for c in clips:
                c["wav"] = wavs[c["key"]]
        else:
            write_cut_shard(clips, args.seconds, os.path.join(work, "shards"))
            prepare_view(os.path.join(work, "shards"), cfg, view, progress=False)
            train(view, os.path.join(work, "run"), cfg, device="cpu")
        train_s = time.perf_counter() - t0
        real = view_frames(view, cfg)
        log = [json.loads(line) for line in open(os.path.join(work, "run", "log.jsonl"))]
        ckpt = torch.load(os.path.join(work, "run", "last.pt"), map_location="cpu", weights_only=True)
        cfg = replace(cfg, steps=ckpt["step"])  # the steps the evaluated weights were trained for
        _, model = load_model(os.path.join(work, "run", "last.pt"), "cpu")

        rows = []
        for i, c in enumerate(clips):
            truth = real[c["key"]][:frames]
            ref = truth[0]
            other = clips[(i + 1) % len(clips)]
            own_audio, other_audio = read_wav(c["wav"]), read_wav(other["wav"])
            static = np.repeat(ref[None], len(truth), axis=0)
            row = {"key": c["key"], "swapped_with": other["key"], "mouth_px": c["mouth_px"],
                   "static_full": psnr(static, truth), "static_mouth": psnr(static, truth, c["boxes"])}
            for g in args.cfg:
                own = generate(model, cfg, ref, own_audio, len(truth), args.sample_steps, g, seed=0)
                swap = generate(model, cfg, ref, other_audio, len(truth), args.sample_steps, g, seed=0)
                row[f"cfg{g:g}"] = {"own_full": psnr(own, truth), "swapped_full": psnr(swap, truth),
                                    "own_mouth": psnr(own, truth, c["boxes"]),
                                    "swapped_mouth": psnr(swap, truth, c["boxes"])}
            rows.append(row)

    print(f"\ntrained {cfg.name} ({sum(p.numel() for p in model.parameters()) / 1e6:.2f} M parameters, "
          f"{cfg.resolution} px, {cfg.frames} frames) on {len(clips)} clips x {args.seconds:g} s for {cfg.steps} "
          f"steps{' (an earlier run: --eval-only)' if args.eval_only else f' in {train_s:.0f} s wall'}; loss {log[0]['loss']:.4f} (first {cfg.log_every} steps) -> "
          f"{log[-1]['loss']:.4f} (last {cfg.log_every})")
    print(f"PSNR (dB) against the real clip over {frames} frames, generated from its first frame "
          f"({args.sample_steps} Euler steps, noise seed 0 for both audios); static = first frame repeated\n")
    result = {"config": cfg.to_dict(), "clips": len(clips), "seconds": args.seconds, "train_s": train_s,
              "loss_first": log[0]["loss"], "loss_last": log[-1]["loss"], "rows": rows, "verdict": {}}
    head = f"{'clip':44s} {'mouth':>5s}  {'whole frame: own  swapped static':>33s}   {'mouth: own  swapped static':>28s}"
    for g in args.cfg:
        k = f"cfg{g:g}"
        print(f"guidance {g:g}" + (" (none)" if g == 1 else ""))
        print(head)
        for r in rows:
            v = r[k]
            print(f"{r['key'][:44]:44s} {r['mouth_px']:4.0f}px  {v['own_full']:13.2f} {v['swapped_full']:8.2f} "
                  f"{r['static_full']:6.2f}   {v['own_mouth']:11.2f} {v['swapped_mouth']:8.2f} {r['static_mouth']:6.2f}")
        mean = {m: float(np.mean([r[k][m] for r in rows])) for m in ("own_full", "swapped_full", "own_mouth",
                                                                     "swapped_mouth")}
        smean = {m: float(np.mean([r[m] for r in rows])) for m in ("static_full", "static_mouth")}
        print(f"{'mean':44s} {'':6s} {mean['own_full']:13.2f} {mean['swapped_full']:8.2f} {smean['static_full']:6.2f}"
              f"   {mean['own_mouth']:11.2f} {mean['swapped_mouth']:8.2f} {smean['static_mouth']:6.2f}")
        wins = sum(r[k]["own_mouth"] > r[k]["swapped_mouth"] for r in rows)
        ok = mean["own_mouth"] > mean["swapped_mouth"]
        print(f"own audio {'beats' if ok else 'does NOT beat'} swapped audio on the mouth: "
              f"{mean['own_mouth'] - mean['swapped_mouth']:+.2f} dB on average, on {wins} of {len(rows)} clips\n")
        result["verdict"][k] = {**mean, "own_beats_swapped_mouth": ok, "clips_won": wins}
    print(f"total {time.perf_counter() - t_start:.0f} s wall")
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
