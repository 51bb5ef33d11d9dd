"""argparse subcommands for the model: `prepare-train`, `train`, `sample` and `bench-model`.

`curation/cli.py` wires them in with add_prepare_parser(subparsers), add_train_parser(subparsers) etc.;
each sets `func(args)`.
Run this file directly to try them standalone: python -m curation.dit.cli train --help"""

from __future__ import annotations

import argparse
import json

from .configs import CONFIGS, get_config


def _default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _sizes() -> str:
    return "; ".join(f"{c.name}: {c.resolution}x{c.resolution}, {c.frames} frames, dim {c.dim}, depth {c.depth}"
                     for c in CONFIGS.values())


def _run_train(args: argparse.Namespace) -> None:
    from .train import train

    if args.config is None and not args.resume:
        raise SystemExit("train: --config is required for a new run")
    cfg = get_config(args.config) if args.config else None
    try:
        train(args.shards, args.out, cfg, device=args.device, resume=args.resume, steps=args.steps,
              compile=args.compile)
    except (FileExistsError, FileNotFoundError, ValueError) as e:
        raise SystemExit(f"train: {e}") from None


def _run_prepare(args: argparse.Namespace) -> None:
    from .view import prepare_view

    try:
        meta = prepare_view(args.shards, get_config(args.config), args.out, workers=args.workers)
    except (FileExistsError, FileNotFoundError, ValueError) as e:
        raise SystemExit(f"prepare-train: {e}") from None
    print(f"wrote {args.out}: {meta['clips']} clips, {meta['frames']} frames at {meta['params']['resolution']} px "
          f"({len(meta['shards'])} shards); {len(meta['left_out'])} clips left out")
    for c in meta["left_out"]:
        print(f"  left out {c['key']}: {c['reason']} ({c['message']})")


def add_prepare_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "prepare-train", help="decode curated shards once into a training view for a model config",
        description="Decode every clip of the curation shards once, at the config's resolution and 25 fps "
                    "(centre-cropped square), and write the frames (uint8) and log-mel (float16) as WebDataset "
                    "shards of their own with a view.json naming the config values they were made for. "
                    "`curation train --shards VIEW` then trains without decoding anything.")
    p.add_argument("--shards", required=True, metavar="DIR", help="the shards/ folder of a curation run")
    p.add_argument("--config", required=True, choices=sorted(CONFIGS), metavar="CONFIG",
                   help=f"model size the view is for, one of {', '.join(CONFIGS)} ({_sizes()})")
    p.add_argument("--out", required=True, metavar="VIEW", help="directory to write the view to (new or empty)")
    p.add_argument("--workers", type=int, metavar="N", help="clips decoded at once (default: the CPU count)")
    p.set_defaults(func=_run_prepare)
    return p


def add_train_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "train", help="train the audio-driven video DiT on curated shards",
        description="Train the bundled audio-driven video DiT (pixel space, rectified flow) on the WebDataset "
                    "shards a curation run wrote. Logs loss and throughput to stdout and OUT/log.jsonl, "
                    "checkpoints to OUT/last.pt.")
    p.add_argument("--shards", required=True, metavar="DIR",
                   help="a training view (from `curation prepare-train`), or the shards/ folder of a curation "
                        "run: then the view is prepared first, once, in RUN_DIR/view")
    p.add_argument("--config", choices=sorted(CONFIGS), metavar="CONFIG",
                   help=f"model size, one of {', '.join(CONFIGS)} ({_sizes()}). Required for a new run; "
                        "with --resume the checkpoint's config is used and CONFIG, if given, must match it")
    p.add_argument("--out", required=True, metavar="RUN_DIR",
                   help="run directory for last.pt, log.jsonl and config.json; must not hold a checkpoint "
                        "unless --resume")
    p.add_argument("--steps", type=int, metavar="N",
                   help="total optimizer steps, also the length of the cosine schedule (default: the config's; "
                        "with --resume, the checkpoint's)")
    p.add_argument("--device", choices=["cpu", "cuda"], default=_default_device(),
                   help="where to train: cuda uses bf16 autocast, cpu fp32 (default: cuda when available)")
    p.add_argument("--resume", action="store_true",
                   help="continue RUN_DIR/last.pt exactly: same weights, optimizer, schedule, data order and "
                        "noise as an uninterrupted run")
    p.add_argument("--compile", action="store_true", help="run the model through torch.compile")
    p.set_defaults(func=_run_train)
    return p


def _run_sample(args: argparse.Namespace) -> None:
    from .sample import sample_to_file

    n = sample_to_file(args.ckpt, args.ref, args.audio, args.out, frames=args.frames, steps=args.steps,
                       cfg_scale=args.cfg, seed=args.seed, device=args.device)
    print(f"wrote {args.out}: {n} frames at 25 fps with audio")


def add_sample_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "sample", help="generate a talking-head clip from a reference image and an audio file",
        description="Generate a 25 fps mp4 at the model's training resolution from a reference image and "
                    "speech audio with a trained checkpoint (EMA weights), the audio muxed in.")
    p.add_argument("--ckpt", required=True, metavar="RUN_DIR/last.pt", help="checkpoint written by `train`")
    p.add_argument("--ref", required=True, metavar="IMG",
                   help="reference image (any format ffmpeg reads; a video's first frame works too), "
                        "centre-cropped square and scaled to the training resolution")
    p.add_argument("--audio", required=True, metavar="WAV",
                   help="driving audio (any format ffmpeg reads; resampled to 16 kHz mono for the model)")
    p.add_argument("--out", required=True, metavar="OUT.mp4", help="mp4 to write (H.264 + AAC)")
    p.add_argument("--frames", type=int, metavar="N", help="frames to generate (default: the audio's length)")
    p.add_argument("--steps", type=int, metavar="N", help="Euler steps from noise to video (default: the config's)")
    p.add_argument("--cfg", type=float, metavar="S",
                   help="classifier-free guidance scale on audio; 1 disables guidance (default: the config's)")
    p.add_argument("--seed", type=int, default=0, help="noise seed (default: 0)")
    p.add_argument("--device", choices=["cpu", "cuda"], default=_default_device(),
                   help="where to run the model (default: cuda when available)")
    p.set_defaults(func=_run_sample)
    return p


def run_bench(args: argparse.Namespace) -> None:
    from .bench import benchmark, format_report

    r = benchmark(get_config(args.config), args.device, batch_size=args.batch, steps=args.steps,
                  warmup=args.warmup, peak_tflops=args.peak_tflops, compile=args.compile)
    print(format_report(r))
    print(json.dumps(r))


BENCH_DESCRIPTION = (
    "Time train_step (the function training runs: forward, backward, clipping, AdamW, EMA; bf16 autocast on "
    "CUDA) on a synthetic batch and report step time, samples/s, FLOPs per step (FlopCounterMode) and model "
    "FLOPs utilisation, as text and as one JSON line.")


def add_bench_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The benchmark's options, shared by `curation bench-model` and bench/bench_model.py."""
    p.add_argument("--config", choices=sorted(CONFIGS), default="tiny", metavar="CONFIG",
                   help=f"model size, one of {', '.join(CONFIGS)} (default: tiny)")
    p.add_argument("--device", choices=["cpu", "cuda"], default=_default_device(),
                   help="device to time (default: cuda when available)")
    p.add_argument("--batch", type=int, metavar="B", help="batch size (default: the config's)")
    p.add_argument("--steps", type=int, default=10, metavar="N", help="timed steps (default: 10)")
    p.add_argument("--warmup", type=int, default=3, metavar="N", help="untimed steps first (default: 3)")
    p.add_argument("--peak-tflops", type=float, metavar="T",
                   help="peak TFLOP/s for MFU; default: 989 (dense bf16) on H100/H200, else MFU is n/a")
    p.add_argument("--compile", action="store_true", help="time the model through torch.compile")
    p.set_defaults(func=run_bench)
    return p


def add_bench_parser(subparsers) -> argparse.ArgumentParser:
    return add_bench_arguments(subparsers.add_parser(
        "bench-model", help="time the model's training step and report samples/s and MFU",
        description=BENCH_DESCRIPTION))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="curation", description="talkcurate model commands")
    sub = parser.add_subparsers(dest="command", required=True)
    add_prepare_parser(sub)
    add_train_parser(sub)
    add_sample_parser(sub)
    add_bench_parser(sub)
    args = parser.parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    main()
