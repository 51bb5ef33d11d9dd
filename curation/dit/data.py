"""Decoding for the model: log-mel audio, 16 kHz audio files and square 25 fps frames at training size.

Every ffmpeg call goes through curation.media.ffmpeg. Training itself decodes nothing: view.py decodes each
clip once into a training view and loader.py reads windows of it.
"""

from __future__ import annotations

import functools
import io
import wave

import numpy as np
import torch

from ..media.ffmpeg import probe, read_audio, read_frames
from .configs import AUDIO_RATE, FPS, MEL_PER_FRAME

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
    return read_audio(path, rate=AUDIO_RATE)


# ---------------------------------------------------------------- video

def decode_square(path: str, size: int, start_frame: int = 0, n: int | None = None) -> np.ndarray:
    """Frames [start_frame, start_frame + n) (all when n is None) of a video at 25 fps, or an image, as
    (n, size, size, 3) uint8 RGB: centre-cropped square in square pixels and scaled while decoding."""
    info = probe(path)
    side = min(info.width, info.height)
    crop = ((info.width - side) // 2, (info.height - side) // 2, side, side)
    start_s = start_frame / FPS
    end_s = None if n is None else start_s + n / FPS
    frames = read_frames(path, start_s, end_s, fps=FPS, size=(size, size), crop=crop)
    if n is not None:
        if len(frames) < n:
            raise RuntimeError(f"decoded {len(frames)} of {n} frames from frame {start_frame} of {path}")
        frames = frames[:n]
    if frames.shape[1:] != (size, size, 3):
        raise RuntimeError(f"decoded frames of shape {frames.shape[1:]} from {path}, wanted {(size, size, 3)}")
    return frames
