"""Sampling: a reference image and an audio file -> an mp4 at 25 fps with that audio muxed in.

The clip is generated in windows of the config's frame count (one batch of windows, all from the same
reference, each with its own audio), joined and cut to the requested length."""

from __future__ import annotations

import math

import numpy as np
import torch

from ..media.ffmpeg import encode_frames
from .configs import FPS, Config
from .data import SAMPLES_PER_FRAME, decode_square, load_audio, mel_window
from .dit import DiT, check_prediction
from .flow import sample
from .train import autocast


def load_model(ckpt_path: str, device: str | torch.device) -> tuple[Config, DiT]:
    """The EMA weights of a training checkpoint, in eval mode on `device`."""
    ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    check_prediction(ckpt, ckpt_path)
    cfg = Config.from_dict(ckpt["config"])
    model = DiT(cfg)
    model.load_state_dict(ckpt["ema"])
    return cfg, model.to(device).eval()


def generate(model: DiT, cfg: Config, ref: np.ndarray, audio: np.ndarray, frames: int, steps: int,
             cfg_scale: float, seed: int = 0, device: str | torch.device = "cpu", batch: int = 8) -> np.ndarray:
    """(frames, H, W, 3) uint8 for a reference (H, W, 3) uint8 and 16 kHz mono audio samples."""
    device = torch.device(device)
    windows = math.ceil(frames / cfg.frames)
    mel = torch.stack([mel_window(audio, w * cfg.frames, cfg.frames, cfg.n_mels) for w in range(windows)])
    ref_t = torch.from_numpy(ref).permute(2, 0, 1).float().div(127.5).sub(1.0).to(device)
    gen = torch.Generator(device).manual_seed(seed)
    clips = []
    for i in range(0, windows, batch):
        m = mel[i:i + batch].to(device)
        with autocast(device):
            clips.append(sample(model, ref_t.expand(len(m), -1, -1, -1), m, cfg.frames, steps, cfg_scale, gen))
    video = torch.cat(clips).permute(0, 2, 3, 4, 1).flatten(0, 1)[:frames]  # (frames, H, W, 3)
    return ((video + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8).cpu().numpy()


def write_mp4(frames: np.ndarray, audio_path: str, out_path: str) -> None:
    """H.264 yuv420p at 25 fps from (N, H, W, 3) uint8, with the audio file muxed in as AAC and cut to
    the video's length."""
    encode_frames(frames, out_path, fps=FPS, audio_path=audio_path)


def sample_to_file(ckpt_path: str, ref_path: str, audio_path: str, out_path: str, *, frames: int | None = None,
                   steps: int | None = None, cfg_scale: float | None = None, seed: int = 0,
                   device: str = "cpu") -> int:
    """Write OUT_PATH; `frames` defaults to the audio's length, steps and cfg_scale to the config's.
    Returns the frame count."""
    cfg, model = load_model(ckpt_path, device)
    audio = load_audio(audio_path)
    frames = frames or max(1, round(len(audio) / SAMPLES_PER_FRAME))
    ref = decode_square(ref_path, cfg.resolution, 0, 1)[0]
    video = generate(model, cfg, ref, audio, frames, steps or cfg.sample_steps,
                     cfg.cfg_scale if cfg_scale is None else cfg_scale, seed, device)
    write_mp4(video, audio_path, out_path)
    return frames
