"""Scenes: split each source into shots with PySceneDetect's detectors on a low-resolution decode, trim a
few frames at every cut, split long shots, and emit every shot as a candidate clip."""

from __future__ import annotations

import math
from typing import Literal

from pydantic import Field

from curation.media.ffmpeg import iter_frames
from curation.engine.record import ClipRecord
from stages.base import Check, Params, Stage


class ScenesParams(Params):
    detector: Literal["content", "adaptive"] = "content"
    threshold: float = Field(27.0, gt=0, description="ContentDetector threshold (PySceneDetect default 27)")
    adaptive_threshold: float = Field(3.0, gt=0, description="AdaptiveDetector ratio (PySceneDetect default 3)")
    min_scene_len_frames: int = Field(15, ge=1, description="PySceneDetect min_scene_len")
    luma_only: bool = False
    decode_width: int = Field(256, ge=32, description="detect on frames scaled to this width (PySceneDetect auto-downscales to ~256)")
    trim_frames: int = Field(3, ge=0, description="frames dropped on each side of every cut (blends, flashes)")
    min_s: float = Field(5.0, ge=0, description="shots shorter than this are rejected as too_short")
    max_s: float = Field(50.0, gt=0, description="longer shots are split into equal pieces no longer than this")
    decode_threads: int = Field(1, ge=0, description="ffmpeg decoder threads (0 = auto)")
    fast_decode: bool = Field(True, description="skip the decoder's deblocking filter and scale bilinearly: "
                              "cheaper frames, good enough to compare shots (same cuts on the shared footage)")

    checks = (Check("shot_duration_s", "min_s", "min", "too_short", "the shot is shorter than a clip may be"),)


def make_detector(p: ScenesParams):
    from scenedetect.detectors import AdaptiveDetector, ContentDetector

    if p.detector == "adaptive":
        return AdaptiveDetector(adaptive_threshold=p.adaptive_threshold, min_scene_len=p.min_scene_len_frames,
                                luma_only=p.luma_only)
    return ContentDetector(threshold=p.threshold, min_scene_len=p.min_scene_len_frames, luma_only=p.luma_only)


def detect_cuts(path: str, fps: float, src_size: tuple[int, int], p: ScenesParams,
                timeout: float = 600.0) -> tuple[list[int], int]:
    """Frame numbers (at the source rate) where a new shot starts, and the number of frames decoded."""
    det = make_detector(p)
    cuts: list[int] = []
    n = 0
    for frame in iter_frames(path, fps=fps, size=(p.decode_width, None), src_size=src_size,
                             pix_fmt="bgr24", timeout=timeout, threads=p.decode_threads, fast=p.fast_decode):
        cuts.extend(det.process_frame(n, frame))
        n += 1
    if hasattr(det, "post_process"):
        cuts.extend(det.post_process(n))
    return sorted(c for c in set(cuts) if 0 < c < n), n


def shots_from_cuts(cuts: list[int], n_frames: int, fps: float, trim: int, max_s: float) -> list[tuple[float, float]]:
    """[start_s, end_s) spans: shots between cuts, trimmed by `trim` frames at each cut (not at the
    source's ends), shots over `max_s` split into equal pieces."""
    bounds = [0, *cuts, n_frames]
    spans = []
    for i in range(len(bounds) - 1):
        a, b = bounds[i], bounds[i + 1]
        if i > 0:
            a += trim
        if i < len(bounds) - 2:
            b -= trim
        if b <= a:
            continue
        s, e = a / fps, b / fps
        pieces = max(1, math.ceil((e - s) / max_s - 1e-9))
        step = (e - s) / pieces
        spans.extend((s + k * step, s + (k + 1) * step) for k in range(pieces))
    return spans


class ScenesStage(Stage):
    name = "scenes"
    Params = ScenesParams
    params: ScenesParams
    hard_reasons = {"no_shot": "no shot is left once `trim_frames` are dropped at every cut (cuts too close together)"}

    def process_one(self, rec: ClipRecord) -> list[ClipRecord]:
        p = self.params
        fps = float(rec.probe["fps"])
        cuts, n = detect_cuts(rec.source, fps, (rec.probe["width"], rec.probe["height"]), p, self.ctx.timeout_s)
        if n == 0:
            self.reject(rec, "unreadable", "no frame could be decoded")
            return [rec]
        spans = shots_from_cuts(cuts, n, fps, p.trim_frames, p.max_s)
        if not spans:
            self.reject(rec, "no_shot", "no shot left after trimming cuts")
            return [rec]
        out = []
        for i, (s, e) in enumerate(spans):
            c = rec.child(i, len(spans), s, e)
            c.data["cuts_s"] = [x / fps for x in cuts]
            self.check(c, "shot_duration_s", e - s)
            out.append(c)
        return out
