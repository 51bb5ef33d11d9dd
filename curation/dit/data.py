"""Training batches from curated WebDataset shards (`DIR/*.tar`: KEY.mp4, KEY.wav, KEY.json per clip).

Each sample becomes a random window of `frames` video frames, centre-cropped square and scaled to the
training resolution by ffmpeg while decoding only that window, the clip's first frame as the reference,
and the aligned audio as log-mel frames (4 per video frame: hop 160 at 16 kHz).

The stream is a pure function of (shards, seed, workers, batch size) and of the global batch index, so a
resumed run continues with exactly the batches it would have seen: every DataLoader worker plays a
"logical worker" that owns every W-th shard and loops over its shards forever (reshuffled each epoch,
seeded by seed/worker/epoch). The DataLoader takes batches from its workers round-robin, so global batch
i comes from logical worker i % W; a loader started at batch b maps its worker w to logical worker
(w + b) % W, which skips the raw (undecoded) samples of the batches it already gave.
"""

from __future__ import annotations

import functools
import glob
import io
import json
import os
import random
import subprocess
import tempfile
import wave
from collections.abc import Iterator

import numpy as np
import torch
import webdataset as wds

from ..media.ffmpeg import FFMPEG
from .configs import AUDIO_RATE, FPS, MEL_PER_FRAME, Config

N_FFT = 400  # 25 ms window
HOP = AUDIO_RATE // FPS // MEL_PER_FRAME  # 160 samples = 10 ms
SAMPLES_PER_FRAME = AUDIO_RATE // FPS  # 640


# ---------------------------------------------------------------- audio

@functools.cache
def _mel_basis(n_mels: int) -> torch.Tensor:
    """HTK-scale triangular filters, (N_FFT // 2 + 1, n_mels), 0 Hz to Nyquist."""
    mel = np.linspace(0.0, 2595.0 * np.log10(1.0 + AUDIO_RATE / 2 / 700.0), n_mels + 2)
    hz = 700.0 * (10.0 ** (mel / 2595.0) - 1.0)
    bins = np.fft.rfftfreq(N_FFT, 1.0 / AUDIO_RATE)[:, None]
    lower, centre, upper = hz[:-2], hz[1:-1], hz[2:]
    fb = np.maximum(0.0, np.minimum((bins - lower) / (centre - lower), (upper - bins) / (upper - centre)))
    return torch.from_numpy(fb.astype(np.float32))


def mel_window(wav: np.ndarray, start_frame: int, n_frames: int, n_mels: int) -> torch.Tensor:
    """Log-mel (4 * n_frames, n_mels) of the audio under video frames [start_frame, start_frame + n_frames).

    Mel frame j is centred in its 10 ms hop; audio outside the file counts as silence."""
    pad = (N_FFT - HOP) // 2
    a = start_frame * SAMPLES_PER_FRAME - pad
    b = (start_frame + n_frames) * SAMPLES_PER_FRAME + pad
    seg = np.zeros(b - a, np.float32)
    lo, hi = max(a, 0), min(b, len(wav))
    if hi > lo:
        seg[lo - a:hi - a] = wav[lo:hi]
    spec = torch.stft(torch.from_numpy(seg), N_FFT, HOP, window=torch.hann_window(N_FFT), center=False,
                      return_complex=True).abs().square()
    return torch.log(torch.clamp(spec.T @ _mel_basis(n_mels), min=1e-5))


def read_wav(data: bytes) -> np.ndarray:
    """16 kHz mono PCM16 wav bytes -> float32 samples in [-1, 1]."""
    with wave.open(io.BytesIO(data)) as w:
        if (w.getframerate(), w.getnchannels(), w.getsampwidth()) != (AUDIO_RATE, 1, 2):
            raise ValueError(f"wav must be {AUDIO_RATE} Hz mono PCM16, got {w.getframerate()} Hz "
                             f"{w.getnchannels()} ch {8 * w.getsampwidth()} bit")
        pcm = w.readframes(w.getnframes())
    return np.frombuffer(pcm, "<i2").astype(np.float32) / 32768.0


def load_audio(path: str) -> np.ndarray:
    """Any audio file ffmpeg reads -> 16 kHz mono float32 samples."""
    cmd = [FFMPEG, "-nostdin", "-v", "error", "-i", path, "-map", "0:a:0", "-ac", "1", "-ar", str(AUDIO_RATE),
           "-f", "f32le", "-"]
    p = subprocess.run(cmd, capture_output=True, check=False, timeout=600)
    if p.returncode:
        raise RuntimeError(f"ffmpeg could not read audio from {path}: {p.stderr.decode(errors='replace')[-300:]}")
    return np.frombuffer(p.stdout, "<f4").copy()


# ---------------------------------------------------------------- video

def read_frames(path: str, start_frame: int, n: int, size: int) -> np.ndarray:
    """Frames [start_frame, start_frame + n) of a 25 fps video (or an image) as (n, size, size, 3) uint8
    RGB, centre-cropped square and scaled while decoding; ffmpeg seeks to the window, never decoding the
    clip at full resolution beyond it."""
    cmd = [FFMPEG, "-nostdin", "-v", "error", "-threads", "1"]
    if start_frame:
        cmd += ["-ss", f"{start_frame / FPS:.6f}"]
    cmd += ["-i", path, "-map", "0:v:0", "-frames:v", str(n),
            "-vf", f"crop=w=min(iw\\,ih):h=min(iw\\,ih),scale={size}:{size}:flags=area",
            "-pix_fmt", "rgb24", "-f", "rawvideo", "-"]
    p = subprocess.run(cmd, capture_output=True, check=False, timeout=300)
    want = n * size * size * 3
    if p.returncode or len(p.stdout) != want:
        raise RuntimeError(f"ffmpeg decoded {len(p.stdout)} of {want} bytes for frames {start_frame}+{n} "
                           f"of {path}: {p.stderr.decode(errors='replace')[-300:]}")
    return np.frombuffer(bytearray(p.stdout), np.uint8).reshape(n, size, size, 3)


# ---------------------------------------------------------------- pipeline

def _wanted_member(fname: str) -> bool:
    return fname.endswith((".mp4", ".wav", ".json"))


def _usable(sample: dict, cfg: Config) -> bool:
    if not all(k in sample for k in ("mp4", "wav", "json")):
        return False
    meta = json.loads(sample["json"])
    return meta.get("fps", FPS) == FPS and meta.get("n_frames", 0) >= cfg.frames


def _epoch_samples(urls: list[str], cfg: Config, rng: random.Random) -> Iterator[dict]:
    """One pass over `urls` in shuffled shard order through a shuffle buffer, each with a window start."""
    shards = rng.sample(urls, len(urls))
    samples = wds.tarfile_to_samples(select_files=_wanted_member)(iter([{"url": u} for u in shards]))
    usable = (s for s in samples if _usable(s, cfg))
    for s in wds.shuffle(cfg.shuffle_buffer, cfg.shuffle_buffer, rng=rng)(usable):
        s["__start__"] = rng.randint(0, json.loads(s["json"])["n_frames"] - cfg.frames)
        yield s


def _raw_stream(urls: list[str], cfg: Config, start_batch: int) -> Iterator[dict]:
    """Endless raw samples of this worker's logical share, from global batch `start_batch` on."""
    info = torch.utils.data.get_worker_info()
    worker, workers = (info.id, info.num_workers) if info else (0, 1)
    logical = (worker + start_batch) % workers
    mine = urls[logical::workers]
    skip = cfg.batch_size * max(0, (start_batch - logical + workers - 1) // workers)
    epoch = 0
    while True:
        n = 0
        for s in _epoch_samples(mine, cfg, random.Random(f"{cfg.seed}:{logical}:{epoch}")):
            n += 1
            if skip:
                skip -= 1
                continue
            yield s
        if n == 0:
            raise RuntimeError(f"no clip with mp4, wav, json and >= {cfg.frames} frames at {FPS} fps in {mine}")
        epoch += 1 + skip // n  # whole epochs still to skip need not be read again
        skip %= n


def decode_sample(sample: dict, cfg: Config) -> dict:
    start = sample["__start__"]
    with tempfile.NamedTemporaryFile(suffix=".mp4") as f:
        f.write(sample["mp4"])
        f.flush()
        ref = read_frames(f.name, 0, 1, cfg.resolution)[0]
        video = read_frames(f.name, start, cfg.frames, cfg.resolution)
    return {
        "video": torch.from_numpy(video).permute(3, 0, 1, 2),  # (3, T, H, W) uint8
        "ref": torch.from_numpy(ref).permute(2, 0, 1),  # (3, H, W) uint8
        "mel": mel_window(read_wav(sample["wav"]), start, cfg.frames, cfg.n_mels),  # (4T, n_mels)
        "key": sample["__key__"],
    }


def collate(samples: list[dict]) -> dict:
    batch = {k: torch.stack([s[k] for s in samples]) for k in ("video", "ref", "mel")}
    batch["key"] = [s["key"] for s in samples]
    return batch


def make_loader(shards_dir: str, cfg: Config, start_batch: int = 0, pin_memory: bool = False) -> wds.WebLoader:
    """Endless loader of batches {video (B,3,T,H,W) uint8, ref (B,3,H,W) uint8, mel (B,4T,n_mels), key}
    starting at global batch `start_batch`. Uses min(cfg.num_workers, number of shards) workers."""
    urls = sorted(glob.glob(os.path.join(shards_dir, "*.tar")))
    if not urls:
        raise FileNotFoundError(f"no *.tar shards in {shards_dir}")
    dataset = wds.DataPipeline(
        functools.partial(_raw_stream, urls, cfg, start_batch),
        wds.map(functools.partial(decode_sample, cfg=cfg)),
        wds.batched(cfg.batch_size, collation_fn=collate, partial=False),
    )
    workers = min(cfg.num_workers, len(urls))
    return wds.WebLoader(dataset, batch_size=None, num_workers=workers, pin_memory=pin_memory,
                         prefetch_factor=2 if workers else None)
