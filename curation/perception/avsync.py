"""Weights-free audio-visual offset from face landmarks and log-mel bands: the `landmarks` sync backend's
`cca` estimator (after FaceSync, Slaney and Covell, NIPS 2000: a canonical correlation learned on in-sync
footage, then used to find the lag at which a clip's audio best explains its lips).

- video: lip and jaw geometry of every frame (inner and outer lip opening, mouth width, chin, lower and upper
  lip to the nose tip, inner mouth width; all divided by the inter-ocular distance, so zoom drops out), slow
  drift removed (1 s moving average), standardised per clip, plus their velocities;
- audio: log-mel energies (24 bands, one 40 ms window centred on each video frame's time), slow drift removed,
  standardised per clip, stacked over +-`context` frames (the audio around a frame shapes the lips);
- projection: the first canonical pair (video weights, audio weights) of the two, fitted (ridge-regularised)
  on in-sync clips pooled (`fit_projection`; the packaged one, avsync_projection.json, on the shared in-sync
  footage by bench/bench_sync_accuracy.py --fit);
- per clip: the correlation of the projected video with the projected audio `lag` frames later, for every
  lag in -max_lag..max_lag, on the same video frames for every lag (max_lag frames in from each end);
- offset = the lag of the peak; confidence = how far the peak stands out, in SyncNet's spirit (SyncNet: median
  minus minimum distance over the lags): Fisher's z of the peak correlation minus that of the median of the
  lags more than `exclude` frames away, times sqrt(frames scored - 3), the z's standard error (`stand_out`).

Convention (the pipeline's): positive lag = the audio lags the video."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from curation.perception.lipsignal import FACE_POINTS, fill_gaps, mouth_opening

_EYE_L, _EYE_R = FACE_POINTS.index(33), FACE_POINTS.index(263)


@dataclass
class SyncEstimate:
    offset: int | None        # frames, positive = audio lags; None when nothing could be measured
    conf: float | None        # peak stand-out (robust z-score); None when nothing could be measured
    curve: np.ndarray         # correlation of the projected features per lag (-max_lag..max_lag)
    n_windows: int
    why_none: str = ""        # why nothing was measured


def _detrend(x: np.ndarray, frames: int) -> np.ndarray:
    """Remove a moving average over `frames` from each column of (N, d) x."""
    if frames <= 1 or len(x) <= frames:
        return x - x.mean(0, keepdims=True)
    k = np.ones(frames) / frames
    pad = frames // 2
    xp = np.pad(x, ((pad, frames - 1 - pad), (0, 0)), mode="edge")
    out = np.empty_like(x)
    for j in range(x.shape[1]):
        out[:, j] = x[:, j] - np.convolve(xp[:, j], k, mode="valid")
    return out


def _standardise(x: np.ndarray) -> np.ndarray:
    s = x.std(0, keepdims=True)
    return (x - x.mean(0, keepdims=True)) / np.where(s > 1e-9, s, 1.0)


def with_velocity(x: np.ndarray) -> np.ndarray:
    """x and its central difference, side by side."""
    v = np.gradient(x, axis=0) if len(x) > 1 else np.zeros_like(x)
    return np.concatenate([x, v], 1)


def geometry_features(points: np.ndarray, detrend_frames: int = 25) -> np.ndarray | None:
    """(N, 14): the lip/jaw distances of the module docstring (/ inter-ocular distance), drift removed,
    standardised, with their velocities; None when fewer than 3 frames have a face."""
    p = np.asarray(points, np.float64)
    iod = np.maximum(np.linalg.norm(p[:, _EYE_R] - p[:, _EYE_L], axis=1), 1e-6)

    def dist(a: int, b: int) -> np.ndarray:
        return np.linalg.norm(p[:, FACE_POINTS.index(a)] - p[:, FACE_POINTS.index(b)], axis=1) / iod

    f = np.stack([mouth_opening(p), dist(0, 17), dist(61, 291), dist(152, 1), dist(14, 1), dist(13, 1),
                  dist(78, 308)], 1)
    ok = np.isfinite(f).all(1)
    if ok.sum() < 3:
        return None
    for j in range(f.shape[1]):
        f[:, j] = fill_gaps(np.where(ok, f[:, j], np.nan))
    return _standardise(with_velocity(_detrend(f, detrend_frames)))


def _mel_filters(n_fft: int, rate: int, n_mels: int, fmin: float, fmax: float) -> np.ndarray:
    def mel(f):
        return 2595.0 * np.log10(1.0 + f / 700.0)

    def hz(m):
        return 700.0 * (10 ** (m / 2595.0) - 1.0)

    freqs = np.fft.rfftfreq(n_fft, 1.0 / rate)
    edges = hz(np.linspace(mel(fmin), mel(min(fmax, rate / 2)), n_mels + 2))
    fb = np.zeros((n_mels, len(freqs)))
    for m in range(n_mels):
        lo, c, hi = edges[m], edges[m + 1], edges[m + 2]
        fb[m] = np.clip(np.minimum((freqs - lo) / max(c - lo, 1e-9), (hi - freqs) / max(hi - c, 1e-9)), 0, None)
    return fb


def audio_features(audio: np.ndarray, n_frames: int, rate: int = 16000, fps: float = 25.0, n_mels: int = 24,
                   band: tuple[float, float] = (100.0, 7000.0), context: int = 2,
                   detrend_frames: int = 25) -> np.ndarray:
    """(n_frames, n_mels * (2 * context + 1)): log-mel energies in a window of one video frame centred on each
    frame's time (frame k is shown at k / fps), drift removed, standardised, stacked over frames
    k - context .. k + context (edges repeated)."""
    x = np.asarray(audio, np.float64)
    hop = rate / fps
    win = int(round(hop))
    n_fft = 1 << (win - 1).bit_length()
    pad = np.pad(x, (win, win + int(hop * n_frames) + win))
    starts = np.round(np.arange(n_frames) * hop).astype(int) + win - win // 2
    seg = pad[starts[:, None] + np.arange(win)[None, :]] * np.hanning(win)[None, :]
    spec = np.abs(np.fft.rfft(seg, n_fft, axis=1)) ** 2
    logmel = np.log(spec @ _mel_filters(n_fft, rate, n_mels, band[0], band[1]).T + 1e-8)
    logmel = _standardise(_detrend(logmel, detrend_frames))
    padded = np.pad(logmel, ((context, context), (0, 0)), mode="edge")
    return np.concatenate([padded[context + k:context + k + n_frames] for k in range(-context, context + 1)], 1)


def fit_projection(pairs: list[tuple[np.ndarray, np.ndarray]], ridge_video: float = 0.1,
                   ridge_audio: float = 1.0) -> tuple[np.ndarray, np.ndarray, float]:
    """The first canonical pair of pooled (video features, audio features) of in-sync clips, with ridges
    added to the two covariances: (video weights, audio weights, canonical correlation)."""
    x = np.concatenate([v for v, _ in pairs])
    y = np.concatenate([a for _, a in pairs])
    x, y = x - x.mean(0), y - y.mean(0)
    wx = _whiteners(x.T @ x / len(x), ridge_video)
    wy = _whiteners(y.T @ y / len(y), ridge_audio)
    u, s, vt = np.linalg.svd(wx @ (x.T @ y / len(x)) @ wy)
    wv, wa = wx @ u[:, 0], wy @ vt[0]
    return wv, wa, float(s[0])


def _whiteners(c: np.ndarray, reg: float) -> np.ndarray:
    """Inverse square roots of a stack of covariance matrices (..., d, d) plus `reg` times the identity."""
    w, v = np.linalg.eigh(c + reg * np.eye(c.shape[-1]))
    return (v / np.sqrt(np.maximum(w, 1e-12))[..., None, :]) @ np.swapaxes(v, -1, -2)


def lag_curve(sv: np.ndarray, sa: np.ndarray, t0: int, t1: int, max_lag: int) -> np.ndarray:
    """Pearson correlation of sv[t0:t1] with sa[t0 + lag:t1 + lag] for lag in -max_lag..max_lag."""
    x = sv[t0:t1] - sv[t0:t1].mean()
    x = x / max(float(np.linalg.norm(x)), 1e-12)
    lags = np.arange(-max_lag, max_lag + 1)
    y = sa[(t0 + lags)[:, None] + np.arange(t1 - t0)[None, :]]
    y = y - y.mean(1, keepdims=True)
    y = y / np.maximum(np.linalg.norm(y, axis=1, keepdims=True), 1e-12)
    return y @ x


def stand_out(curve: np.ndarray, n_frames: int, exclude: int = 2) -> tuple[int, float]:
    """(index of the peak, how far the peak correlation stands out above the median of the lags more than
    `exclude` away, in units of a correlation's standard error over `n_frames` frames): (atanh(peak) -
    atanh(median)) * sqrt(n_frames - 3). Fisher's z makes correlations of any size comparable and its standard
    error is 1 / sqrt(n - 3), so a clip's confidence grows with the evidence it has (its scored frames), where
    the former robust z-score of the curve (/ the MAD of the far lags) did not: a smooth curve of a few seconds
    of unrelated speech could stand out by 9 MADs (benchmark: balanced error 16.5 % against 23.5 %)."""
    i = int(np.argmax(curve))
    far = curve[np.abs(np.arange(len(curve)) - i) > exclude]
    if len(far) < 3:
        return i, 0.0
    lim = 1 - 1e-6
    z = float(np.arctanh(np.clip(curve[i], -lim, lim)) - np.arctanh(np.clip(np.median(far), -lim, lim)))
    return i, z * float(np.sqrt(max(n_frames - 3, 1)))


def estimate(vfeat: np.ndarray | None, afeat: np.ndarray, video_w: np.ndarray, audio_w: np.ndarray,
             max_lag: int = 15, exclude: int = 2, min_frames: int = 20) -> SyncEstimate:
    """The offset and its confidence from per-frame video and audio features (same frame rate) and a
    projection (fit_projection)."""
    empty = np.zeros(2 * max_lag + 1)
    if vfeat is None:
        return SyncEstimate(None, None, empty, 0, "no face landmarks in the clip")
    n = min(len(vfeat), len(afeat))
    t0, t1 = max_lag, n - max_lag  # the video frames every lag can be scored on
    if t1 - t0 < min_frames:
        return SyncEstimate(None, None, empty, 0, f"{n} frames with audio and video: too few to search "
                                                  f"+-{max_lag} frames")
    curve = lag_curve(vfeat[:n] @ video_w, afeat[:n] @ audio_w, t0, t1, max_lag)
    i, conf = stand_out(curve, t1 - t0, exclude)
    return SyncEstimate(i - max_lag, conf, curve, 1)


PROJECTION_FILE = Path(__file__).with_name("avsync_projection.json")


def load_projection(path: str | Path = PROJECTION_FILE) -> dict:
    """The packaged projection: {"video": (14,), "audio": (n_mels * (2 * context + 1),), "context", "n_mels",
    "band", "detrend_frames", ...} with the weights as arrays."""
    d = json.loads(Path(path).read_text())
    d["video"] = np.asarray(d["video"], np.float64)
    d["audio"] = np.asarray(d["audio"], np.float64)
    return d
