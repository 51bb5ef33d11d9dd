"""Sync: is there speech, and do the lips move with it? Measures the audio-visual offset of each clip on the
face track of the person stage (no second face detection), rejects clips without speech, out of sync or
whose speech is not the visible person's, and hands the writer the offset of kept clips when the evidence
supports shifting their audio by it.

The writer's shift stops `shift_margin_frames` (1) short of the offset, toward zero: an offset of +3 shifts the
audio by 2, one of +-1 not at all. A shift by an offset that is one frame too large (the estimators' usual
error) then still leaves the clip within a frame of the truth, and a true offset is left at most a frame off.

Convention: offsets in video frames (the manifest's fps; 25 in every shipped manifest); positive = the audio
lags the video (the writer takes the audio `offset` frames later to put it in sync).

Backends:
- `landmarks` (weights-free; the default manifest): MediaPipe FaceLandmarker on per-frame face crops ->
  lip, jaw and reference landmarks per frame, made once per clip (`face_landmarks`: small arrays that any
  number of audio tracks can be scored against with `measure`). Two estimators on them:
  `cca` (curation/perception/avsync.py): lip/jaw geometry against log-mel context through a canonical
  projection fitted on in-sync footage, correlated per lag; confidence = how far the best lag's correlation
  stands out above the median lag's, in standard errors of a correlation over the clip's frames;
  `envelope` (curation/perception/lipsignal.py, the first estimator): mouth opening against 1.5-3.5 kHz log
  energy, normalised cross-correlation; confidence = peak minus median correlation.
  With `landmarks_method: cca` a clip passes the confidence test when the cca confidence reaches
  landmarks_min_conf, or the envelope's reaches landmarks_envelope_min_conf at an offset agreeing with the
  cca one (sync_vote, the checks' `unless`); failing both, `not_speaker` under landmarks_not_speaker_conf, else
  `low_sync_conf`. A kept clip's audio is shifted only at landmarks_shift_min_conf or above
  (shift_decision); otherwise it is kept unshifted or rejected (`unsure_offset`), as the manifest says.
- `syncnet` (the TalkVerse recipe; needs syncnet_v2.model): syncnet-python's network, crops, MFCC, offset
  search and confidence (median minus minimum mean distance), batched (curation/syncnet.py), at 25 fps.

Both: Silero VAD speech ratio first (no_speech), then confidence, then offset (av_offset). When nothing could
be measured (too few frames with audio and a face), sync_offset and sync_conf are null and the clip is
rejected as sync_unmeasured with the reason in its message.
Scores: sync_backend, speech_ratio, sync_conf, sync_offset, sync_shift (none / shifted / unsure / off),
sync_shift_frames (the audio shift applied, frames), sync_min_dist and sync_offset_syncnet (syncnet: minimum
mean distance; the offset in syncnet-python's own sign, = -sync_offset), sync_face_frac, sync_offset_envelope
and sync_conf_envelope (landmarks). Kept clips whose audio is to be shifted get rec.data["audio_shift_frames"]
(the writer applies it)."""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import Field

from curation.media.ffmpeg import iter_frames, read_audio
from curation.engine.record import ClipRecord
from curation.perception.tracks import boxes_at, frame_times
from curation.weights import REGISTRY, resolve
from stages.base import Check, Params, Stage

SYNCNET_FPS = 25.0  # SyncNet works at 25 fps (its windows and audio hop assume it)
AUDIO_RATE = 16000


class SyncParams(Params):
    backend: Literal["landmarks", "syncnet"] = "landmarks"
    vshift: int = Field(15, ge=1, le=30, description="offsets searched: -vshift..+vshift frames")
    max_abs_offset: int = Field(3, ge=0, description="av_offset when |offset| exceeds this (frames at 25 fps)")
    shift_audio: bool = Field(True, description="kept clips with an offset beyond shift_margin_frames get their audio shifted by it, less the margin (landmarks: when the confidence supports it)")
    unsure_offset: Literal["keep_unshifted", "reject"] = Field("keep_unshifted", description="a kept clip whose non-zero offset is not confident enough to shift by: kept with its audio as it is, or rejected as unsure_offset")
    shift_margin_frames: int = Field(1, ge=0, le=3, description="the writer shifts the audio by the offset less this many frames toward zero (+3 -> +2; +-1 -> no shift): a shift that stops a frame short never over-corrects a clip by the estimator's one-frame error, and leaves at most this many frames of a true offset")
    # -- speech presence (both backends) --
    vad_threshold: float = Field(0.5, gt=0, lt=1, description="Silero speech probability that counts a 32 ms chunk as speech")
    min_speech_ratio: float = Field(0.02, ge=0, le=1, description="no_speech below this share of speech chunks")
    # -- landmarks backend --
    landmarks_method: Literal["cca", "envelope"] = Field("cca", description="cca: lip/jaw geometry vs. log-mel bands through a canonical projection fitted on in-sync footage, correlated per lag (curation/perception/avsync.py); envelope: the first estimator, mouth opening vs. 1.5-3.5 kHz energy")
    landmarks_min_conf: float = Field(0.3, description="low_sync_conf below this (cca: how far the best lag's correlation stands out above the median lag's, in standard errors: Fisher z * sqrt(frames - 3); envelope: peak minus median correlation)")
    landmarks_envelope_min_conf: float = Field(0.3, description="cca: the envelope estimator's confidence (peak minus median correlation) that, at an offset agreeing with the cca one, passes a clip whose cca confidence is under landmarks_min_conf")
    landmarks_vote_frames: int = Field(2, ge=0, description="cca: the two estimators agree when their offsets differ by at most this (frames)")
    landmarks_not_speaker_conf: float = Field(0.0, description="not_speaker below this confidence (speech and a face, but no lag at which the lips follow the speech)")
    landmarks_shift_min_conf: float = Field(0.3, description="the audio of a kept clip is shifted by its offset only at this confidence or above")
    landmarks_projection: str | None = Field(None, description="cca: projection file (json, curation/perception/avsync.py); None = the packaged one, fitted on the shared in-sync footage")
    landmarks_lag_correction: int = Field(0, ge=-10, le=10, description="constant lag (frames) of mouth vs. envelope on in-sync footage, subtracted")
    landmarks_min_face_frac: float = Field(0.5, ge=0, le=1, description="low_sync_conf when the landmarker finds the face in fewer frames")
    landmarks_band_hz: tuple[float, float] = Field((1500.0, 3500.0), description="audio band (envelope: band energy; cca: the mel bands span it)")
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
        # landmarks: unless the envelope estimator vouches for the clip (sync_vote 1: its confidence at least
        # landmarks_envelope_min_conf at an offset within landmarks_vote_frames of the cca one)
        Check("sync_conf", "landmarks_not_speaker_conf", "min", "not_speaker",
              "speech and a face, but at no lag do the lips follow the speech: the voice is not the visible person's",
              when=(("backend", "landmarks"),), unless="sync_vote"),
        Check("sync_conf", "landmarks_min_conf", "min", "low_sync_conf", "lips and speech do not correlate enough",
              when=(("backend", "landmarks"),), unless="sync_vote"),
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
               "sync_offset_syncnet": "syncnet: the offset in syncnet-python's own sign (= -sync_offset)",
               "sync_offset_envelope": "landmarks: the envelope estimator's offset (frames)",
               "sync_conf_envelope": "landmarks: the envelope estimator's confidence (peak minus median correlation)",
               "sync_vote": "landmarks: 1 when the envelope estimator vouches for the cca offset, else 0"}
    labels = {"sync_backend": "the sync backend (landmarks or syncnet)",
              "sync_shift": "what the writer does with the audio: none, shifted, unsure (kept unshifted) or off"}
    hard_reasons = {
        "sync_unmeasured": "sync could not be measured (too few frames with a face and audio to search the offsets): "
                           "offset and confidence are null, the message says why",
        "unsure_offset": "kept with a non-zero offset not confident enough to shift the audio by, and the manifest's "
                         "unsure_offset says reject",
    }

    def analysis_fps(self) -> float:
        """The frame rate the offset is measured at (sync_offset counts these frames): SyncNet's own 25 fps,
        or the run's video rate for the landmarks backend."""
        return SYNCNET_FPS if self.params.backend == "syncnet" else float(self.ctx.fps)

    def __init__(self, params: SyncParams, ctx):
        super().__init__(params, ctx)
        self._vad = None
        self._mouth = None
        self._syncnet = None
        self._proj = None

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
                                  threads=self.params.threads or 1, use_gpu=self.ctx.use_gpu)
        return self._vad

    def _get_mouth(self):
        if self._mouth is None:
            from curation.perception.mp_wholebody import face_mesh_tracker  # MouthTracker + the skeleton's 68 points

            self._mouth = face_mesh_tracker(str(resolve("face_landmarker", self.ctx.weights_dir, stage=self.name)))
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
        rec = self._measure_and_decide(rec)
        if not rec.alive:  # the face points are handed on only to a clip that goes on to the skeleton stage
            rec.data.pop("face68", None)
        return rec

    def _measure_and_decide(self, rec: ClipRecord) -> ClipRecord:
        p: SyncParams = self.params
        self.label(rec, "sync_backend", p.backend)
        audio = read_audio(rec.audio_path or rec.source, rec.start_s, rec.end_s, rate=AUDIO_RATE,
                           timeout=self.ctx.timeout_s)
        ratio = self._get_vad().speech_ratio(audio, p.vad_threshold) if len(audio) else 0.0
        self.check(rec, "speech_ratio", ratio)
        if not rec.alive:
            return self._unmeasured(rec)

        if p.backend == "syncnet":
            track = rec.data.get("face_track")
            if not track or not any(b is not None for b in track.get("boxes", [])):
                raise ValueError("no face track: the sync stage needs the person stage's rec.data['face_track']")
            boxes = boxes_at(track, frame_times(rec.start_s, rec.end_s, SYNCNET_FPS))
            w, h = int(rec.probe["width"]), int(rec.probe["height"])
            offset, conf, min_conf = self._syncnet_offset(rec, audio, boxes, w, h)
            shift_conf, why = min_conf, ""
        else:
            m = self._landmarks_offset(rec, audio)
            offset, conf, why = m["offset"], m["conf"], m["why"]
            shift_conf = p.landmarks_shift_min_conf
            if offset is not None and conf is not None:
                self.record(rec, "sync_vote", 1.0 if envelope_vouches(m, p) else 0.0)

        if offset is None or conf is None:  # nothing measured: missing, never a number that reads "in sync"
            if rec.alive:
                self.reject(rec, "sync_unmeasured", f"sync not measured: {why}")
            return self._unmeasured(rec)
        ok_conf = self.check(rec, "sync_conf", conf)
        ok_off = self.check(rec, "sync_offset", offset)
        shift, decision = shift_decision(int(offset), float(conf), ok_conf and ok_off, p.shift_audio, shift_conf,
                                         p.shift_margin_frames)
        if decision == "unsure" and p.unsure_offset == "reject":
            self.reject(rec, "unsure_offset", f"sync_offset={offset} with sync_conf={conf:.3g} < {shift_conf:g} "
                                              "(the confidence needed to shift the audio)")
        if shift and self.analysis_fps() != self.ctx.fps:  # the writer counts the shift in frames of the video rate
            shift = round(shift * self.ctx.fps / self.analysis_fps(), 3)
        self.label(rec, "sync_shift", decision)
        self.record(rec, "sync_shift_frames", float(shift))
        if shift:
            rec.data["audio_shift_frames"] = shift
        else:
            rec.data.pop("audio_shift_frames", None)
        return rec

    def _unmeasured(self, rec: ClipRecord) -> ClipRecord:
        """No offset measured (no speech, or too little to measure): null scores, no shift."""
        for k in ("sync_conf", "sync_offset", "sync_shift_frames"):
            rec.scores[k] = None
        rec.labels["sync_shift"] = None
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
        self.record(rec, "sync_min_dist", res.min_dist)
        self.record(rec, "sync_offset_syncnet", float(res.syncnet_offset))  # syncnet-python's own sign
        return res.offset, res.conf, p.syncnet_min_conf

    def face_landmarks(self, rec: ClipRecord) -> dict[str, np.ndarray]:
        """The landmarks backend's video side, once per clip: FaceLandmarker on per-frame face crops at the
        manifest's fps -> {"points": (N, K, 2) float32 lip/jaw/reference landmarks (NaN: no face), "found"}.
        Small arrays (about 2 KB a frame) that any number of audio tracks can be scored against (`measure`)."""
        from curation.perception.lipsignal import face_crops

        p: SyncParams = self.params
        fps = self.ctx.fps
        track = rec.data.get("face_track")
        if not track or not any(b is not None for b in track.get("boxes", [])):
            raise ValueError("no face track: the sync stage needs the person stage's rec.data['face_track']")
        boxes = boxes_at(track, frame_times(rec.start_s, rec.end_s, fps))
        w, h = int(rec.probe["width"]), int(rec.probe["height"])
        rects, region, out_size = face_crop_plan(boxes, w, h, p.landmarks_face_scale, p.landmarks_crop_px)
        frames = iter_frames(rec.source, rec.start_s, rec.end_s, fps=fps, crop=region, size=out_size,
                             pix_fmt="rgb24", timeout=self.ctx.timeout_s)
        lm = self._get_mouth().landmarks(face_crops(frames, region, rects, p.landmarks_crop_px), fps=fps)
        if "face68" in lm:  # the skeleton's 68 face points (issue 16): crop -> frame pixels
            from curation.perception.mp_wholebody import crop_points_to_frame

            lm["face68"] = crop_points_to_frame(lm["face68"], rects, region, out_size, p.landmarks_crop_px)
        return lm

    def _get_projection(self) -> dict:
        if self._proj is None:
            from curation.perception import avsync

            path = self.params.landmarks_projection
            self._proj = avsync.load_projection(path) if path else avsync.load_projection()
        return self._proj

    def measure(self, landmarks: dict[str, np.ndarray], audio: np.ndarray, projection: dict | None = None) -> dict:
        """One audio track against a clip's landmarks: {"offset", "conf"} of the manifest's estimator
        (`landmarks_method`; None when nothing could be measured, with "why"), and for `cca` also
        {"offset_envelope", "conf_envelope"} of the envelope estimator (the second vote; same landmarks)."""
        from curation.perception.lipsignal import (fill_gaps, lagged_ncc, mouth_opening, offset_and_confidence,
                                                   speech_envelope)

        p: SyncParams = self.params
        fps = self.ctx.fps
        pts = landmarks["points"]
        n = min(len(pts), int(len(audio) * fps / AUDIO_RATE))  # frames that have audio
        out = {"offset": None, "conf": None, "offset_envelope": None, "conf_envelope": None, "why": ""}
        lips = mouth_opening(pts[:n])
        if n >= 2 * p.vshift + 20 and np.isfinite(lips).any():
            env = speech_envelope(audio, n, AUDIO_RATE, fps, tuple(p.landmarks_band_hz))
            lag, conf, _ = offset_and_confidence(lagged_ncc(fill_gaps(lips), env, p.vshift, p.landmarks_detrend_frames))
            out["offset_envelope"], out["conf_envelope"] = lag - p.landmarks_lag_correction, conf
        else:
            out["why"] = f"{n} frames with audio and a face: too few to search +-{p.vshift} frames"
        if p.landmarks_method == "envelope":
            out["offset"], out["conf"] = out["offset_envelope"], out["conf_envelope"]
            out["offset_envelope"] = out["conf_envelope"] = None
            return out
        from curation.perception import avsync

        proj = projection if projection is not None else self._get_projection()
        v = avsync.geometry_features(pts[:n], int(proj["detrend_frames"]))
        a = avsync.audio_features(audio, n, AUDIO_RATE, fps, int(proj["n_mels"]), tuple(proj["band"]),
                                  int(proj["context"]), int(proj["detrend_frames"]))
        est = avsync.estimate(v, a, proj["video"], proj["audio"], p.vshift)
        if est.offset is None:
            out["why"] = est.why_none
        else:
            out["offset"], out["conf"] = est.offset - p.landmarks_lag_correction, est.conf
        return out

    def _landmarks_offset(self, rec, audio):
        p: SyncParams = self.params
        lm = self.face_landmarks(rec)
        if "face68" in lm:  # handed on to the skeleton stage (its face keypoints; it pops them)
            rec.data["face68"] = lm["face68"]
        n = len(lm["found"])
        face_frac = float(lm["found"].mean()) if n else 0.0
        self.check(rec, "sync_face_frac", face_frac)
        m = self.measure(lm, audio)
        self.record(rec, "sync_offset_envelope", m["offset_envelope"])
        self.record(rec, "sync_conf_envelope", m["conf_envelope"])
        return m

    def close(self) -> None:
        if self._mouth is not None:
            self._mouth.close()
        self._vad = self._mouth = self._syncnet = None


def envelope_vouches(m: dict, p: SyncParams) -> bool:
    """The second vote of the landmarks backend (`measure`'s result, offset and conf not None): the envelope
    estimator's confidence is at least landmarks_envelope_min_conf at an offset within landmarks_vote_frames of
    the cca one (two independent estimators agreeing). Such a clip passes the confidence checks (`sync_vote` 1,
    the checks' `unless`); otherwise the cca confidence decides: not_speaker under landmarks_not_speaker_conf
    (the level of other speakers' speech), low_sync_conf under landmarks_min_conf."""
    if p.landmarks_method != "cca":
        return False
    ce, oe = m.get("conf_envelope"), m.get("offset_envelope")
    return ce is not None and ce >= p.landmarks_envelope_min_conf and abs(oe - m["offset"]) <= p.landmarks_vote_frames


def landmarks_conf_verdict(m: dict, p: SyncParams) -> str | None:
    """What the declared confidence checks decide on `measure`'s result (for benchmarks that score many audio
    tracks without a record): None (passes), not_speaker or low_sync_conf, in the checks' order."""
    if envelope_vouches(m, p):
        return None
    if m["conf"] < p.landmarks_not_speaker_conf:
        return "not_speaker"
    return "low_sync_conf" if m["conf"] < p.landmarks_min_conf else None


def margin_shift(offset: int, margin: int) -> int:
    """The frames the writer moves the audio for `offset`: the offset less `margin` frames toward zero (0 within
    the margin)."""
    return (abs(offset) - margin) * (1 if offset > 0 else -1) if abs(offset) > margin else 0


def shift_decision(offset: int, conf: float, kept: bool, shift_audio: bool, shift_min_conf: float,
                   margin: int = 0) -> tuple[int, str]:
    """(frames to shift the audio by, what was decided): `none` (|offset| <= margin, or the clip is
    rejected), `off` (shift_audio is false), `shifted` (the confidence supports the offset: the shift is the
    offset less `margin` frames toward zero, so that an offset one frame too large still leaves the clip within
    a frame of the truth), `unsure` (kept with an offset beyond the margin whose confidence is under
    `shift_min_conf`: the audio is left as it is, or the clip rejected, as the manifest's `unsure_offset` says)."""
    if not kept or abs(offset) <= margin:
        return 0, "none"
    if not shift_audio:
        return 0, "off"
    if conf >= shift_min_conf:
        return margin_shift(offset, margin), "shifted"
    return 0, "unsure"


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
