"""Sync: is there speech, and do the lips move with it? Measures the audio-visual offset of each clip on the
face track of the person stage (no second face detection), rejects clips without speech or out of sync,
and hands the measured offset of kept clips to the writer, which shifts their audio by it.

Convention: offsets in frames of the analysis rate (syncnet: SyncNet's 25 fps; landmarks: the manifest's
video fps); positive = the audio lags the video (the writer takes the audio that much later to put it in
sync; the shift it gets is in frames of the video rate).

Backends:
- `landmarks` (weights-free; the default manifest): MediaPipe FaceLandmarker on per-frame face crops at
  the video rate -> inner-lip opening / inter-ocular distance; the audio's 1.5-3.5 kHz log energy per video frame;
  normalised cross-correlation over +-vshift frames. offset = best lag - `landmarks_lag_correction` (the
  constant lag of these two signals on in-sync footage); confidence = the peak correlation minus the
  median correlation of the lags more than 2 frames from it.
- `syncnet` (the TalkVerse recipe; needs syncnet_v2.model): syncnet-python's network, crops, MFCC, offset
  search and confidence (median minus minimum mean distance), batched (curation/syncnet.py).

Both: Silero VAD speech ratio first (no_speech), then confidence (low_sync_conf), then offset (av_offset).
Scores: sync_backend, speech_ratio, sync_conf, sync_offset, sync_min_dist and sync_offset_syncnet (syncnet:
minimum mean distance; the offset in syncnet-python's own sign, = -sync_offset), sync_face_frac (landmarks:
share of frames where the landmarker found the face), sync_shift_frames (the audio shift applied, frames).
Kept clips with a non-zero offset get rec.data["audio_shift_frames"] = offset (the writer applies it)."""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import Field

from curation.media.ffmpeg import iter_frames, read_audio
from curation.engine.record import ClipRecord
from curation.perception.tracks import boxes_at, frame_times
from curation.weights import REGISTRY, resolve
from stages.base import Check, Params, Stage

SYNCNET_FPS = 25.0  # SyncNet's input rate (the network is trained on 25 fps video): a property of the model
AUDIO_RATE = 16000


class SyncParams(Params):
    backend: Literal["landmarks", "syncnet"] = "landmarks"
    vshift: int = Field(15, ge=1, le=30, description="offsets searched: -vshift..+vshift frames")
    max_abs_offset: int = Field(3, ge=0, description="av_offset when |offset| exceeds this (frames at 25 fps)")
    shift_audio: bool = Field(True, description="kept clips with a non-zero offset get their audio shifted by it")
    # -- speech presence (both backends) --
    vad_threshold: float = Field(0.5, gt=0, lt=1, description="Silero speech probability that counts a 32 ms chunk as speech")
    min_speech_ratio: float = Field(0.02, ge=0, le=1, description="no_speech below this share of speech chunks")
    # -- landmarks backend --
    landmarks_min_conf: float = Field(0.3, description="low_sync_conf below this (peak minus median correlation)")
    landmarks_lag_correction: int = Field(0, ge=-10, le=10, description="constant lag (frames) of mouth vs. envelope on in-sync footage, subtracted")
    landmarks_min_face_frac: float = Field(0.5, ge=0, le=1, description="low_sync_conf when the landmarker finds the face in fewer frames")
    landmarks_band_hz: tuple[float, float] = Field((1500.0, 3500.0), description="speech envelope band")
    landmarks_detrend_frames: int = Field(25, ge=0, description="moving average removed from both signals (frames)")
    landmarks_crop_px: int = Field(256, ge=64, description="face crops fed to the landmarker are this size")
    landmarks_face_scale: float = Field(2.0, gt=1, description="face crop side / median face box side")
    # -- syncnet backend --
    syncnet_min_conf: float = Field(1.6, description="low_sync_conf below this (SyncNet confidence)")
    syncnet_sha256: str | None = Field(REGISTRY["syncnet_v2"].sha256, description="expected sha256 of syncnet_v2.model (None: no check)")
    syncnet_batch_windows: int = Field(16, ge=1, description="5-frame windows per network call")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="syncnet device; auto = cuda when the run uses GPUs and one is visible")
    threads: int = Field(1, ge=0, description="torch / onnxruntime threads per actor (0 = library default)")

    checks = (
        Check("speech_ratio", "min_speech_ratio", "min", "no_speech", "too little speech (Silero VAD)"),
        Check("sync_face_frac", "landmarks_min_face_frac", "min", "low_sync_conf",
              "the face landmarker found the face on too few frames", when=(("backend", "landmarks"),)),
        Check("sync_conf", "landmarks_min_conf", "min", "low_sync_conf", "lips and speech do not correlate enough",
              when=(("backend", "landmarks"),)),
        Check("sync_conf", "syncnet_min_conf", "min", "low_sync_conf", "SyncNet's confidence is too low",
              when=(("backend", "syncnet"),)),
        Check("sync_offset", "max_abs_offset", "max_abs", "av_offset", "audio and video are too far apart (frames)"),
    )


class SyncStage(Stage):
    name = "sync"
    Params = SyncParams
    params: SyncParams
    uses_models = True
    records = {"sync_shift_frames": "the audio shift applied by the writer (frames at the video rate)",
               "sync_min_dist": "syncnet: minimum mean embedding distance",
               "sync_offset_syncnet": "syncnet: the offset in syncnet-python's own sign (= -sync_offset)"}
    labels = {"sync_backend": "the sync backend (landmarks or syncnet)"}

    def analysis_fps(self) -> float:
        """The frame rate the offset is measured at (sync_offset counts these frames): SyncNet's own 25 fps,
        or the run's video rate for the landmarks backend."""
        return SYNCNET_FPS if self.params.backend == "syncnet" else float(self.ctx.fps)

    def __init__(self, params: SyncParams, ctx):
        super().__init__(params, ctx)
        self._vad = None
        self._mouth = None
        self._syncnet = None

    @classmethod
    def required_weights(cls, params: SyncParams) -> list[str]:
        names = ["silero_vad"]
        names.append("face_landmarker" if params.backend == "landmarks" else "syncnet_v2")
        return names

    # -- models (once per actor) -------------------------------------------------------------------------
    def _get_vad(self):
        if self._vad is None:
            from curation.perception.speech import SileroVAD

            self._vad = SileroVAD(str(resolve("silero_vad", self.ctx.weights_dir, stage=self.name)),
                                  threads=self.params.threads or 1)
        return self._vad

    def _get_mouth(self):
        if self._mouth is None:
            from curation.perception.lipsignal import MouthTracker

            self._mouth = MouthTracker(str(resolve("face_landmarker", self.ctx.weights_dir, stage=self.name)))
        return self._mouth

    def _get_syncnet(self):
        if self._syncnet is None:
            import torch

            from curation.perception.syncnet import FastSyncNet, load_syncnet

            p: SyncParams = self.params
            if p.threads:
                torch.set_num_threads(p.threads)
            dev = p.device
            if dev == "auto":
                dev = "cuda" if self.ctx.use_gpu and torch.cuda.is_available() else "cpu"
            path = resolve("syncnet_v2", self.ctx.weights_dir, stage=self.name)
            self._syncnet = FastSyncNet(load_syncnet(str(path), p.syncnet_sha256), dev, p.syncnet_batch_windows)
        return self._syncnet

    # -- per clip ----------------------------------------------------------------------------------------
    def process_one(self, rec: ClipRecord) -> ClipRecord:
        p: SyncParams = self.params
        self.label(rec, "sync_backend", p.backend)
        audio = read_audio(rec.audio_path or rec.source, rec.start_s, rec.end_s, rate=AUDIO_RATE,
                           timeout=self.ctx.timeout_s)
        ratio = self._get_vad().speech_ratio(audio, p.vad_threshold) if len(audio) else 0.0
        self.check(rec, "speech_ratio", ratio)
        if not rec.alive:
            for k in ("sync_conf", "sync_offset", "sync_shift_frames"):
                rec.scores[k] = None
            return rec
        track = rec.data.get("face_track")
        if not track or not any(b is not None for b in track.get("boxes", [])):
            raise ValueError("no face track: the sync stage needs the person stage's rec.data['face_track']")
        times = frame_times(rec.start_s, rec.end_s, self.analysis_fps())
        boxes = boxes_at(track, times)
        w, h = int(rec.probe["width"]), int(rec.probe["height"])

        if p.backend == "syncnet":
            offset, conf, _ = self._syncnet_offset(rec, audio, boxes, w, h)
        else:
            offset, conf, _ = self._landmarks_offset(rec, audio, boxes, w, h)

        ok_conf = self.check(rec, "sync_conf", conf)
        ok_off = self.check(rec, "sync_offset", offset)
        shift = int(offset) if (ok_conf and ok_off and p.shift_audio) else 0
        if self.analysis_fps() != self.ctx.fps:  # the writer counts the shift in frames of the video rate
            shift = round(shift * self.ctx.fps / self.analysis_fps(), 3)
        self.record(rec, "sync_shift_frames", shift)
        if shift:
            rec.data["audio_shift_frames"] = shift
        else:
            rec.data.pop("audio_shift_frames", None)
        return rec

    def _syncnet_offset(self, rec, audio, boxes, w, h):
        from curation.perception import syncnet as sn

        p: SyncParams = self.params
        rects = sn.crop_rects(boxes)
        region = sn.union_region(rects, w, h)
        if region is None:
            raise ValueError("the face track's crops lie outside the frame")
        frames = iter_frames(rec.source, rec.start_s, rec.end_s, fps=SYNCNET_FPS, crop=region, pix_fmt="bgr24",
                             timeout=self.ctx.timeout_s)
        res = self._get_syncnet().evaluate(sn.iter_crops(frames, region[:2], rects), sn.to_int16(audio), p.vshift)
        rec.scores["sync_min_dist"] = res.min_dist
        rec.scores["sync_offset_syncnet"] = float(res.syncnet_offset)  # syncnet-python's own sign
        return res.offset, res.conf, p.syncnet_min_conf

    def _landmarks_offset(self, rec, audio, boxes, w, h):
        from curation.perception.lipsignal import face_crops, fill_gaps, lagged_ncc, offset_and_confidence, speech_envelope

        p: SyncParams = self.params
        rects, region, out_size = face_crop_plan(boxes, w, h, p.landmarks_face_scale, p.landmarks_crop_px)
        fps = self.analysis_fps()
        frames = iter_frames(rec.source, rec.start_s, rec.end_s, fps=fps, crop=region, size=out_size,
                             pix_fmt="rgb24", timeout=self.ctx.timeout_s)
        sig = self._get_mouth().signals(face_crops(frames, region, rects, p.landmarks_crop_px), fps=fps)
        n = len(sig["lips"])
        face_frac = float(sig["found"].mean()) if n else 0.0
        self.check(rec, "sync_face_frac", face_frac)
        n = min(n, int(len(audio) * fps / AUDIO_RATE))  # frames that have audio (a short audio track ends early)
        if n < 2 * p.vshift or not np.isfinite(sig["lips"][:n]).any():
            return 0, 0.0, p.landmarks_min_conf
        env = speech_envelope(audio, n, AUDIO_RATE, fps, tuple(p.landmarks_band_hz))
        ncc = lagged_ncc(fill_gaps(sig["lips"][:n]), env, p.vshift, p.landmarks_detrend_frames)
        lag, conf, _peak = offset_and_confidence(ncc)
        return lag - p.landmarks_lag_correction, conf, p.landmarks_min_conf

    def close(self) -> None:
        if self._mouth is not None:
            self._mouth.close()
        self._vad = self._mouth = self._syncnet = None


def face_crop_plan(boxes: np.ndarray, width: int, height: int, face_scale: float, crop_px: int):
    """Per-frame square face crops of one size for the clip (`face_scale` x the median face side, centred on
    the interpolated box, kept inside the frame), the frame region that holds them all and the size to decode
    that region at so that a crop comes out about `crop_px` wide. Returns (rects (N, 4) float [x, y, side,
    side] in frame pixels, region (x, y, w, h), decode size (w, h))."""
    b = np.asarray(boxes, np.float64)
    side_face = float(np.nanmedian(np.maximum(b[:, 2] - b[:, 0], b[:, 3] - b[:, 1])))
    side = min(face_scale * side_face, width, height)
    cx = (b[:, 0] + b[:, 2]) / 2
    cy = (b[:, 1] + b[:, 3]) / 2
    x = np.clip(cx - side / 2, 0, width - side)
    y = np.clip(cy - side / 2, 0, height - side)
    rects = np.stack([x, y, np.full_like(x, side), np.full_like(y, side)], 1)
    x0, y0 = int(np.floor(x.min())) // 2 * 2, int(np.floor(y.min())) // 2 * 2
    x1, y1 = min(width, int(np.ceil(x.max() + side))), min(height, int(np.ceil(y.max() + side)))
    rw, rh = (x1 - x0) // 2 * 2, (y1 - y0) // 2 * 2
    r = min(1.0, crop_px / side)
    return rects, (x0, y0, rw, rh), (max(2, int(round(rw * r / 2)) * 2), max(2, int(round(rh * r / 2)) * 2))
