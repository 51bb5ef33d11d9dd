"""Visual quality per clip: a few sampled frames (the person stage's sampling, sparser), every frame measure
computed at one fixed working resolution (`work_short_side`, 360 px on the short side by default, up- or
down-scaled) so thresholds do not depend on the source size, the face cropped from the person stage's
`rec.data["face_track"]` (no second face detection) and resized to `face_size` px.

Scores (audit columns) and reasons, checked in this order (the first failing one is the clip's reason):
    short_side_px                     source's shorter display side             -> low_resolution
    luma_mean                         mean luma 0-255 (median over samples)     -> too_dark / too_bright
    clipped_frac                      share of pixels at <= 4 or >= 251         -> bad_exposure
    sharp_frame, sharp_face           variance of the Laplacian (median)        -> blurry
    brisque                           BRISQUE, lower is better (median)         -> low_quality
    motion_static_frac                share of sample pairs that did not change -> frozen (frozen video, slideshow)
    motion_change, motion_shift       median luma change / global shift         -> camera_motion
    aesthetic                         CLIP + LAION aesthetic head (when enabled) -> low_aesthetic"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import Field

from curation.media.frames import geometry, iter_samples
from curation.perception.imagequality import (exposure, frame_change, global_shift, laplacian_var, resize_short, to_gray)
from curation.engine.record import ClipRecord
from curation.geometry import square_crop
from curation.perception.tracks import boxes_at
from curation.weights import resolve
from stages.base import Check, Params, Stage


class QualityParams(Params):
    sample_fps: float = Field(2.0, gt=0, le=30, description="sampled frames per second of clip")
    max_samples: int = Field(60, ge=2, description="cap on sampled frames per clip")
    decode_short_side: int = Field(720, ge=64, description="decode with the short side at most this (face crops come from here)")
    work_short_side: int = Field(360, ge=64, description="fixed working resolution of the frame measures (short side)")
    face_size: int = Field(128, ge=16, description="face crops are resized to this square size")
    face_scale: float = Field(1.0, gt=0, description="face crop side = this times the face box's larger side")
    decoder: Literal["decord", "ffmpeg"] = "decord"
    threads: int = Field(1, ge=0, description="decoder / model threads per actor")
    # -- thresholds --
    min_short_side: int = Field(256, ge=0, description="low_resolution below this short side (display px)")
    min_luma: float = Field(50.0, ge=0, le=255, description="too_dark below this mean luma")
    max_luma: float = Field(210.0, ge=0, le=255, description="too_bright above this mean luma")
    max_clipped: float = Field(0.25, ge=0, le=1, description="bad_exposure above this share of clipped pixels")
    min_sharp_frame: float = Field(120.0, ge=0, description="blurry below this Laplacian variance of the frame")
    min_sharp_face: float = Field(700.0, ge=0, description="blurry below this Laplacian variance of the face crop")
    brisque: bool = Field(True, description="compute BRISQUE (cv2.quality, opencv-contrib)")
    brisque_samples: int = Field(4, ge=1, description="BRISQUE on this many evenly spaced samples")
    max_brisque: float = Field(55.0, description="low_quality above this BRISQUE score")
    motion_size: int = Field(64, ge=16, description="frame change is measured on frames shrunk to this short side")
    static_change: float = Field(0.5, ge=0, description="a sample pair changing less than this (mean |dluma|) is static")
    max_static_frac: float = Field(0.5, ge=0, le=1, description="frozen above this share of static sample pairs")
    max_motion_change: float = Field(25.0, ge=0, description="camera_motion above this median mean |dluma| between samples")
    max_motion_shift: float = Field(0.1, ge=0, description="camera_motion above this median global shift per sample (share of short side)")
    # -- CLIP aesthetic (off unless a local CLIP checkpoint is named) --
    aesthetic_clip_path: str | None = Field(None, description="local open_clip checkpoint; None = aesthetic score off")
    aesthetic_clip_arch: str = Field("ViT-B-32-quickgelu", description="open_clip architecture of that checkpoint")
    aesthetic_clip_config: str | None = Field(None, description="model config JSON for an architecture open_clip does not ship")
    aesthetic_head: Literal["aesthetic_vit_b_32", "aesthetic_vit_b_16", "aesthetic_vit_l_14"] = "aesthetic_vit_b_32"
    aesthetic_samples: int = Field(3, ge=1, description="aesthetic score = mean over this many evenly spaced samples")
    min_aesthetic: float = Field(4.0, description="low_aesthetic below this LAION aesthetic score")

    checks = (
        Check("short_side_px", "min_short_side", "min", "low_resolution", "the source's shorter display side is too small"),
        Check("luma_mean", "min_luma", "min", "too_dark", "the median mean luma is too low"),
        Check("luma_mean", "max_luma", "max", "too_bright", "the median mean luma is too high"),
        Check("clipped_frac", "max_clipped", "max", "bad_exposure", "too many pixels clipped to black or white"),
        Check("sharp_frame", "min_sharp_frame", "min", "blurry", "the frame is not sharp (variance of the Laplacian)"),
        Check("sharp_face", "min_sharp_face", "min", "blurry", "the face crop is not sharp (variance of the Laplacian)"),
        Check("brisque", "max_brisque", "max", "low_quality", "BRISQUE (lower is better) is too high"),
        Check("motion_static_frac", "max_static_frac", "max", "frozen", "too many sample pairs did not change"),
        Check("motion_change", "max_motion_change", "max", "camera_motion", "the picture changes too much between samples"),
        Check("motion_shift", "max_motion_shift", "max", "camera_motion", "the picture shifts too much between samples"),
        Check("aesthetic", "min_aesthetic", "min", "low_aesthetic", "the LAION aesthetic score is too low"),
    )


def _evenly(n: int, k: int) -> list[int]:
    return sorted(set(np.linspace(0, n - 1, num=min(n, k)).round().astype(int).tolist())) if n else []


class QualityStage(Stage):
    """Resolution, exposure, sharpness, BRISQUE, motion and (optionally) CLIP aesthetics.
    Reasons: low_resolution, too_dark, too_bright, bad_exposure, blurry, low_quality, frozen, camera_motion,
    low_aesthetic."""

    name = "quality"
    Params = QualityParams
    params: QualityParams
    uses_models = True
    records = {"quality_samples": "frames sampled"}

    def __init__(self, params: QualityParams, ctx):
        super().__init__(params, ctx)
        self._brisque = None
        self._aesthetic = None

    @classmethod
    def required_weights(cls, params: QualityParams) -> list[str]:
        names = ["brisque_model", "brisque_range"] if params.brisque else []
        if params.aesthetic_clip_path:
            names.append(params.aesthetic_head)
        return names

    @classmethod
    def check_startup(cls, params: QualityParams, weights_dir: str | None) -> None:
        """Start-up check beyond registry names: the CLIP checkpoint (and model config) the manifest points at."""
        for name in cls.required_weights(params):
            resolve(name, weights_dir, stage=cls.name)
        for what, p in (("aesthetic_clip_path", params.aesthetic_clip_path),
                        ("aesthetic_clip_config", params.aesthetic_clip_config)):
            if p and not Path(p).expanduser().is_file():
                raise FileNotFoundError(
                    f"stage 'quality': {what} = {p} is not a file; the CLIP encoder for the aesthetic score is not "
                    f"downloaded at run time: put an open_clip checkpoint of {params.aesthetic_clip_arch} there, or set "
                    f"aesthetic_clip_path: null to turn the aesthetic score off")
        if params.aesthetic_clip_path and not params.aesthetic_clip_config:
            from curation.perception.aesthetic import HEAD_FOR_ARCH

            want = HEAD_FOR_ARCH.get(params.aesthetic_clip_arch)
            if want and want != params.aesthetic_head:
                raise ValueError(f"stage 'quality': aesthetic_head {params.aesthetic_head} does not match CLIP "
                                 f"{params.aesthetic_clip_arch} (needs {want})")

    def setup(self) -> None:
        p = self.params
        import cv2

        if p.threads:
            cv2.setNumThreads(p.threads)
        if p.brisque:
            from curation.perception.imagequality import Brisque

            self._brisque = Brisque(self.weight("brisque_model"), self.weight("brisque_range"))
        if p.aesthetic_clip_path:
            from curation.perception.aesthetic import AestheticScorer

            self.check_startup(p, self.ctx.weights_dir)
            self._aesthetic = AestheticScorer(
                p.aesthetic_clip_arch, Path(p.aesthetic_clip_path).expanduser(),
                self.weight(p.aesthetic_head),
                model_config=p.aesthetic_clip_config, threads=p.threads,
                device="cuda" if self.ctx.use_gpu else "cpu")

    def measure(self, rec: ClipRecord) -> dict:
        """Every score of the clip (None where it cannot be measured)."""
        self.ensure_setup()
        p = self.params
        geo = geometry(rec.probe, short_side=p.decode_short_side)
        track = rec.data.get("face_track")
        frames_gray, sharp_frame, sharp_face, lumas, clipped, work_rgb = [], [], [], [], [], []
        for t, rgb in iter_samples(rec.source, rec.start_s, rec.end_s, p.sample_fps, geo,
                                   rotation=int(rec.probe.get("rotation") or 0), threads=p.threads,
                                   max_samples=p.max_samples, backend=p.decoder, timeout=self.ctx.timeout_s):
            work = resize_short(rgb, p.work_short_side)
            gray = to_gray(work)
            sharp_frame.append(laplacian_var(gray))
            m, c = exposure(gray)
            lumas.append(m)
            clipped.append(c)
            frames_gray.append(gray)  # working resolution grey frames: 360 x 640 at most ~ 0.2 MB each
            work_rgb.append(work)
            if track is not None:
                box = boxes_at(track, [t])[0]
                if np.all(np.isfinite(box)):
                    b = (box[0] / geo.scale_x, box[1] / geo.scale_y, box[2] / geo.scale_x, box[3] / geo.scale_y)
                    x, y, w, h = square_crop(b, p.face_scale, geo.dec_w, geo.dec_h)
                    face = to_gray(rgb[y:y + h, x:x + w])
                    if face.size:
                        sharp_face.append(laplacian_var(resize_short(face, p.face_size)))
        n = len(frames_gray)
        sc: dict[str, float | None] = {"quality_samples": float(n)}
        if n == 0:
            return sc
        sc["short_side_px"] = float(min(rec.probe["width"], rec.probe["height"]))
        sc["luma_mean"] = float(np.median(lumas))
        sc["clipped_frac"] = float(np.median(clipped))
        sc["sharp_frame"] = float(np.median(sharp_frame))
        sc["sharp_face"] = float(np.median(sharp_face)) if sharp_face else None
        if self._brisque is not None:
            sc["brisque"] = float(np.median([self._brisque(frames_gray[i]) for i in _evenly(n, p.brisque_samples)]))
        if n >= 2:
            change = [frame_change(a, b, p.motion_size) for a, b in zip(frames_gray, frames_gray[1:])]
            shift = [global_shift(a, b) for a, b in zip(frames_gray, frames_gray[1:])]
            sc["motion_static_frac"] = float(np.mean(np.asarray(change) < p.static_change))
            sc["motion_change"] = float(np.median(change))
            sc["motion_shift"] = float(np.median(shift))
        if self._aesthetic is not None:
            sc["aesthetic"] = float(np.mean(self._aesthetic.score([work_rgb[i] for i in _evenly(n, p.aesthetic_samples)])))
        return sc

    def process_one(self, rec: ClipRecord) -> ClipRecord:
        sc = self.measure(rec)
        self.record(rec, "quality_samples", sc["quality_samples"])
        if not sc["quality_samples"]:
            self.reject(rec, "unreadable", "no frame could be decoded for the quality stage")
            return rec
        for score in ("short_side_px", "luma_mean", "clipped_frac", "sharp_frame"):
            self.check(rec, score, sc[score])
        if sc["sharp_face"] is not None:  # no face track (person stage off): frame sharpness only
            self.check(rec, "sharp_face", sc["sharp_face"])
        else:
            rec.scores["sharp_face"] = None  # not measured: null, no decision on it
        for score in ("brisque", "motion_static_frac", "motion_change", "motion_shift", "aesthetic"):
            if score in sc:  # not computed with these params (BRISQUE or aesthetic off, a single sample)
                self.check(rec, score, sc[score])
        return rec
