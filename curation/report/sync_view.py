"""`curation sync-view`: a clip's lips against its sound, frame by frame, in one picture, to check a sync
decision by eye.

Three panels on one time axis:
1. the inner-lip gap per video frame (divided by the inter-ocular distance, so zoom drops out), a dot at
   each frame's time k / fps;
2. the spectrogram of the audio (10 ms hop), each column at its window's centre;
3. the first (envelope) estimator's lag curve on these two signals: lip gap against 1.5-3.5 kHz log energy,
   positive lag = the audio lags the video. It is a rough check, not the stage's decision.

What to look for: lips closed (gap near 0) for a bilabial (/p b m/) or a pause line up with quiet or
murmur in the spectrogram, and the lips opening lines up with the burst or onset that follows. A clip one
frame (40 ms) off shows those edges one grid step apart.

Two inputs:
- a kept clip of an output (`DIR KEY`): its own pose.npz face points (COCO-WholeBody 23-90, the 68 iBUG
  points) and its own wav, exactly as they were written, so after the writer's audio shift. No model runs.
- any span of a source file (`--source FILE --start S --end E`): the pipeline's person stage and the sync
  stage's FaceLandmarker pass on it, and the source's audio as it is (before any shift); the title also
  gives the sync stage's own offset and confidence for that span (the manifest's estimator)."""

from __future__ import annotations

import io
import json
import wave
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from curation.formats.wholebody import FACE
from curation.perception.lipsignal import fill_gaps, lagged_ncc, offset_and_confidence, speech_envelope

# iBUG 68 (0-based): inner-lip (upper, lower) pairs and the outer eye corners
IBUG_INNER_LIP_PAIRS = ((61, 67), (62, 66), (63, 65))
IBUG_EYE_CORNERS = (36, 45)
ENVELOPE_BAND = (1500.0, 3500.0)
MAX_LAG = 15


@dataclass
class SyncSignals:
    gap: np.ndarray            # (T,) inner-lip gap / inter-ocular distance per frame; NaN where no face
    audio: np.ndarray          # mono float32 in [-1, 1]
    rate: int
    fps: float
    title: str
    facts: dict = field(default_factory=dict)  # what the pipeline recorded or measured, shown under the title


def lip_gap_ibug(face68: np.ndarray, score: np.ndarray | None = None) -> np.ndarray:
    """Mean inner-lip gap / inter-ocular distance per frame from (T, 68, 2) iBUG points; NaN where a point
    used is missing (score 0, or NaN coordinates)."""
    p = np.asarray(face68, np.float64)
    used = [i for pair in IBUG_INNER_LIP_PAIRS for i in pair] + list(IBUG_EYE_CORNERS)
    ok = np.isfinite(p[:, used]).all(axis=(1, 2))
    if score is not None:
        ok &= (np.asarray(score)[:, used] > 0).all(1)
    iod = np.linalg.norm(p[:, IBUG_EYE_CORNERS[1]] - p[:, IBUG_EYE_CORNERS[0]], axis=1)
    gap = np.mean([np.linalg.norm(p[:, a] - p[:, b], axis=1) for a, b in IBUG_INNER_LIP_PAIRS], 0)
    ok &= iod > 1e-6
    return np.where(ok, gap / np.where(ok, iod, 1.0), np.nan)


def lip_gap_from_pose(keypoints_info: np.ndarray) -> np.ndarray:
    """lip_gap_ibug on a pose.npz's keypoints_info (T, 1, 133, 3): its face points (COCO-WholeBody 23-90)."""
    k = np.asarray(keypoints_info)[:, 0, FACE]
    return lip_gap_ibug(k[..., :2], k[..., 2])


def shifted(audio: np.ndarray, frames: float, rate: int, fps: float) -> np.ndarray:
    """The audio taken `frames` video frames later (> 0; silence appended) or earlier (< 0; silence first),
    the length kept: what the writer's audio shift does."""
    n = int(round(frames * rate / fps))
    if n == 0:
        return audio
    if n > 0:
        return np.concatenate([audio[n:], np.zeros(min(n, len(audio)), audio.dtype)])
    return np.concatenate([np.zeros(min(-n, len(audio)), audio.dtype), audio[:len(audio) + n]])


def envelope_curve(gap: np.ndarray, audio: np.ndarray, rate: int, fps: float) -> np.ndarray | None:
    """The envelope estimator's lag curve (-MAX_LAG..MAX_LAG) of gap against the audio; None when too short
    or without a face."""
    n = min(len(gap), int(len(audio) * fps / rate))
    if n < 2 * MAX_LAG + 20 or not np.isfinite(gap[:n]).any():
        return None
    env = speech_envelope(audio, n, rate, fps, ENVELOPE_BAND)
    return lagged_ncc(fill_gaps(gap[:n]), env, MAX_LAG)


def spectrogram(audio: np.ndarray, rate: int, hop_s: float = 0.01, win_s: float = 0.025):
    """(column centre times (s), frequencies (Hz), log power (freqs, columns))."""
    hop, win = int(round(hop_s * rate)), int(round(win_s * rate))
    x = np.asarray(audio, np.float64)
    n_cols = max(1, int(np.ceil(len(x) / hop)))
    xp = np.pad(x, (win // 2, win + n_cols * hop))
    idx = np.arange(n_cols)[:, None] * hop + np.arange(win)[None, :]
    n_fft = 1 << (win - 1).bit_length()
    power = np.abs(np.fft.rfft(xp[idx] * np.hanning(win)[None, :], n_fft, axis=1)) ** 2
    return np.arange(n_cols) * hop / rate, np.fft.rfftfreq(n_fft, 1.0 / rate), np.log(power.T + 1e-10)


def _wav_samples(data: bytes) -> tuple[np.ndarray, int]:
    with wave.open(io.BytesIO(data)) as w:
        if w.getsampwidth() != 2:
            raise ValueError(f"expected 16-bit PCM wav, got {8 * w.getsampwidth()}-bit")
        x = np.frombuffer(w.readframes(w.getnframes()), "<i2").astype(np.float32) / 32768.0
        ch, rate = w.getnchannels(), w.getframerate()
    return (x.reshape(-1, ch).mean(1) if ch > 1 else x), rate


SYNC_FACTS = ("sync_backend", "sync_offset", "sync_conf", "sync_shift", "sync_shift_frames", "sync_offset_envelope",
              "sync_conf_envelope", "speech_ratio")


def from_output(out_dir: str | Path, key: str) -> SyncSignals:
    """A kept clip of an output directory, as written: its pose.npz face points and its wav."""
    import pandas as pd

    from curation.formats import pose_npz
    from curation.formats.shards import read_samples

    out = Path(out_dir)
    index = out / "index.parquet"
    if not index.exists():
        raise FileNotFoundError(f"{index}: not an output of `curation run` (or it has kept nothing yet)")
    idx = pd.read_parquet(index, columns=["key", "shard"])
    row = idx[idx["key"] == key]
    if not len(row):
        near = ", ".join(idx["key"].head(5))
        raise KeyError(f"no kept clip {key!r} in {index} ({len(idx)} kept; e.g. {near})")
    shard = out / "shards" / str(row.iloc[0]["shard"])
    for k, files in read_samples(str(shard)):
        if k == key:
            break
    else:
        raise KeyError(f"{key!r} is in the index but not in {shard}")
    for ext in ("pose.npz", "wav", "json"):
        if ext not in files:
            raise ValueError(f"{key}: the sample has no {ext} (its files: {', '.join(files)})")
    meta = json.loads(files["json"])
    gap = lip_gap_from_pose(pose_npz.decode(files["pose.npz"])["keypoints_info"])
    audio, rate = _wav_samples(files["wav"])
    scores = meta.get("scores", {})
    facts = {k: scores.get(k) for k in SYNC_FACTS if k in scores}
    facts["audio_shift_frames (applied)"] = meta.get("audio_shift_frames", 0)
    src = str(meta.get("source", "")).rsplit("/", 1)[-1]
    title = f"{key}: {src} {meta.get('start_s', 0):.2f}-{meta.get('end_s', 0):.2f} s, as written"
    return SyncSignals(gap, audio, rate, float(meta.get("fps", 25.0)), title, facts)


def from_source(path: str, start_s: float = 0.0, end_s: float | None = None, weights_dir: str | None = None,
                manifest: str | None = None) -> SyncSignals:
    """A span of a source file: the person stage's face track, the sync stage's FaceLandmarker pass on it and
    the span's audio as it is; facts = the sync stage's measurement (the manifest's estimator)."""
    from curation.engine.config import load_manifest
    from curation.engine.record import ClipRecord
    from curation.media.ffmpeg import read_audio
    from curation.perception.lipsignal import mouth_opening
    from curation.weights import weights_dir as default_weights_dir
    from stages.base import StageContext
    from stages.person import PersonStage
    from stages.probe import ProbeStage
    from stages.sync import AUDIO_RATE, SyncStage

    m = load_manifest(manifest) if manifest else load_manifest()
    ctx = StageContext(weights_dir=str(default_weights_dir(weights_dir)), fps=m.video.fps, audio_rate=m.video.audio_rate)
    (rec,) = ProbeStage(m.params("probe"), ctx).process([ClipRecord.for_source(str(path))])
    if not rec.probe.get("duration_s") or not rec.probe.get("has_video") or not rec.probe.get("has_audio"):
        raise ValueError(f"{path}: {rec.reason} ({rec.message})")  # a short or small source is still drawn
    dur = float(rec.probe["duration_s"])
    end = dur if end_s is None else min(float(end_s), dur)
    if not 0 <= start_s < end:
        raise ValueError(f"span {start_s:g}-{end:g} s is empty (the file lasts {dur:.2f} s)")
    rec = rec.child(0, 1, float(start_s), end)
    (rec,) = PersonStage(m.params("person"), ctx).process([rec])
    if "face_track" not in rec.data:
        raise ValueError(f"{path} {start_s:g}-{end:g} s: the person stage found no face to track ({rec.reason})")
    sync = SyncStage(m.params("sync"), ctx)
    try:
        lm = sync.face_landmarks(rec)
        audio = read_audio(str(path), rec.start_s, rec.end_s, rate=AUDIO_RATE)
        meas = sync.measure(lm, audio) if sync.params.backend == "landmarks" else {}
    finally:
        sync.close()
    facts = {"person stage": rec.reason or "passes", "face found": f"{float(lm['found'].mean()):.0%} of frames"}
    if meas:
        facts.update({f"sync_offset ({sync.params.landmarks_method})": meas["offset"],
                      f"sync_conf ({sync.params.landmarks_method})": meas["conf"],
                      "sync_offset_envelope": meas["offset_envelope"], "sync_conf_envelope": meas["conf_envelope"]})
    title = f"{Path(path).name} {rec.start_s:.2f}-{rec.end_s:.2f} s, source audio (no shift)"
    return SyncSignals(mouth_opening(lm["points"]), audio, AUDIO_RATE, float(ctx.fps), title, facts)


def render(sig: SyncSignals, out_png: str | Path, span: tuple[float, float] | None = None,
           shift_frames: float = 0.0) -> dict:
    """Draw the three panels (module docstring) over `span` (s, within the clip; default: all of it, at most
    12 s) into out_png; the audio taken `shift_frames` frames later first (a preview of a writer's shift).
    Returns what was drawn: {"frames", "span", "envelope_offset", "envelope_conf"} (None when the clip is too
    short for the lag curve)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    audio = shifted(np.asarray(sig.audio, np.float32), shift_frames, sig.rate, sig.fps)
    n = min(len(sig.gap), int(np.ceil(len(audio) * sig.fps / sig.rate)))
    dur = n / sig.fps
    t0, t1 = span if span else (0.0, min(dur, 12.0))
    t0, t1 = max(0.0, t0), min(dur, t1)
    if t1 <= t0:
        raise ValueError(f"span {t0:g}-{t1:g} s lies outside the clip (0-{dur:.2f} s)")
    k0, k1 = int(np.ceil(t0 * sig.fps - 1e-9)), int(np.floor(t1 * sig.fps - 1e-9)) + 1
    curve = envelope_curve(sig.gap[:n], audio, sig.rate, sig.fps)
    lag = conf = None
    if curve is not None:
        lag, conf, _ = offset_and_confidence(curve)

    fig, ax = plt.subplots(3, 1, figsize=(max(10.0, 3.2 * (t1 - t0)), 8.0),
                           gridspec_kw={"height_ratios": [2, 2, 1.4]})
    ft = np.arange(k0, k1) / sig.fps
    ax[0].plot(ft, sig.gap[k0:k1], "o-", ms=3, lw=1)
    ax[0].set_ylabel("inner-lip gap / IOD")
    times, freqs, logp = spectrogram(audio, sig.rate)
    cols = (times >= t0 - 0.01) & (times <= t1 + 0.01)
    if cols.any():
        shown = logp[:, cols]
        ax[1].pcolormesh(times[cols], freqs, shown, shading="nearest", cmap="magma",
                         vmin=float(np.percentile(shown, 30)), vmax=float(np.percentile(shown, 99.5)))
    ax[1].set_ylim(0, min(8000, sig.rate / 2))
    ax[1].set_ylabel("Hz")
    ax[1].set_xlabel("s (grid: every 5 frames; minor ticks: every frame)")
    for a in ax[:2]:
        a.set_xlim(t0, t1)
        a.set_xticks(np.arange(int(np.ceil(t0 * sig.fps / 5)) * 5, k1, 5) / sig.fps)
        a.set_xticks(ft, minor=True)
        a.grid(True, which="major", alpha=0.5)
        a.grid(True, which="minor", alpha=0.15)
    if curve is not None:
        lags = np.arange(-MAX_LAG, MAX_LAG + 1)
        ax[2].plot(lags, curve, "o-", ms=3)
        ax[2].axvline(lag, color="r", lw=1)
        ax[2].set_title(f"envelope estimator on this clip (a rough check): peak at {lag:+d} frames, "
                        f"confidence {conf:.2f}", fontsize=9)
    else:
        ax[2].text(0.5, 0.5, "too short (or no face) for the lag curve", ha="center", transform=ax[2].transAxes)
    ax[2].set_xlabel("lag, frames (+ = the audio lags the video)")
    ax[2].grid(True, alpha=0.4)
    facts = dict(sig.facts)
    if shift_frames:
        facts["previewed shift"] = f"audio {shift_frames:+g} frames"
    lines = ", ".join(f"{k} {fmt_value(v)}" for k, v in facts.items())
    fig.suptitle(f"{sig.title}\n{lines}", fontsize=9)
    fig.tight_layout()
    Path(out_png).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=80)
    plt.close(fig)
    return {"frames": k1 - k0, "span": (k0 / sig.fps, k1 / sig.fps), "envelope_offset": lag, "envelope_conf": conf}


def fmt_value(v) -> str:
    if v is None:
        return "null"
    if isinstance(v, float):
        return f"{v:.3g}"
    return str(v)
