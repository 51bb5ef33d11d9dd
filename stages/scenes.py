"""Scenes: split each source into shots with PySceneDetect's detectors on a low-resolution decode, trim a
few frames at every cut, split long shots, and emit every shot as a candidate clip.

Two passes (`two_pass`, content detector; issue 16 item 4). Decoding is most of the cost and a full decode is
the floor, so the first pass decodes only the reference frames: PyAV (libavcodec in-process, no ffmpeg start-up)
with the decoder told to skip the frames no other frame references (`coarse_skip: nonref`, `skip_frame=NONREF`:
every frame it decodes is exact); on streams without such frames (no B-frames) that is every frame.
(`bidir`, skipping every B-frame, decodes fewer frames but damages HEVC's: S01's P-frames reference B-frames,
and it found two false cuts at S01's keyframes.)
Frames are numbered by their presentation order (the demuxer's timestamps, read first). Each decoded frame gets
ContentDetector's own score against the previous decoded frame: where the two are consecutive frames, that is
exactly the full pass's score; where B-frames lie between them (a gap of 2-4 frames) and the score reaches
`coarse_factor` x threshold, the gap is a candidate and the second pass decodes it exactly (the B-frames inside,
from the keyframe before, with everything else still skipped) and scores its every frame. Frames of the gaps
below that are taken as under the threshold. The detector's own cut logic (its min-scene-length filter) then
runs over the scores of every frame: the same cuts as a full pass whenever no frame in a gap under
`coarse_factor` x threshold would have crossed the threshold (a cut inside a gap is a change between two shots,
which the gap's score sees too). bench/bench_scenes.py: cuts and CPU against PySceneDetect's CLI per file.

Decoded frames are scaled to `decode_width` (never up: a 160-px source is compared at 160 px, as the CLI does;
scaling it up changed the scores enough to miss S14's cut). The adaptive detector, `two_pass: false`, rotated
sources and files libav cannot number or read decode every frame with ffmpeg (`iter_frames`, the source's rate)."""

from __future__ import annotations

import math
from typing import Literal

from pydantic import Field

from curation.media.ffmpeg import iter_frames, local_path
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
    two_pass: bool = Field(True, description="content detector: decode reference frames only, then the B-frames of "
                           "candidate gaps only (PyAV); false: every frame with ffmpeg")
    coarse_skip: Literal["nonref", "bidir"] = Field("nonref", description="two_pass: frames the first pass skips: "
                                                   "nonref (frames no other frame references: every decoded frame is exact) or "
                                                   "bidir (every B-frame: cheaper, but where P-frames reference B-frames, as in "
                                                   "HEVC, the decoded frames are damaged and false cuts appear)")
    coarse_factor: float = Field(0.5, gt=0, le=1, description="two_pass: a gap of skipped B-frames is decoded when the "
                                 "score across it reaches this share of the threshold")

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
    for frame in iter_frames(path, fps=fps, size=(min(p.decode_width, int(src_size[0])), None), src_size=src_size,
                             pix_fmt="bgr24", timeout=timeout, threads=p.decode_threads, fast=p.fast_decode):
        cuts.extend(det.process_frame(n, frame))
        n += 1
    if hasattr(det, "post_process"):
        cuts.extend(det.post_process(n))
    return sorted(c for c in set(cuts) if 0 < c < n), n


def _out_size(width: int, height: int, decode_width: int) -> tuple[int, int]:
    """Frames scaled to `decode_width` wide (never up), display aspect kept, even height."""
    w = min(int(decode_width), int(width))
    return w, max(2, int(round(w * height / width / 2)) * 2)


def _content_detector(p: "ScenesParams", scores=None):
    """PySceneDetect's ContentDetector with the manifest's settings; with `scores`, one whose frame scores are
    given (the two passes'), so that its own cut logic (threshold, min-scene-length filter) decides the cuts."""
    from scenedetect.detectors import ContentDetector

    kw = dict(threshold=p.threshold, min_scene_len=p.min_scene_len_frames, luma_only=p.luma_only)
    if scores is None:
        return ContentDetector(**kw)

    class Given(ContentDetector):
        def _calculate_frame_score(self, frame_num, frame_img):
            return float(scores[frame_num])

    return Given(**kw)


def detect_cuts_two_pass(path: str, src_size: tuple[int, int], p: "ScenesParams") -> tuple[list[int], int, dict] | None:
    """Content cuts from reference frames plus the candidate gaps (module docstring): (cuts, frames, stats
    {"decoded", "gap_frames", "candidates"}), or None where the stream's packets cannot number its frames
    (missing or repeated presentation timestamps, a packet flagged corrupt): the caller then decodes every frame."""
    import av
    import numpy as np

    with av.open(path) as c:
        s = c.streams.video[0]
        pts, keys = [], []
        for pkt in c.demux(s):
            if pkt.size == 0:
                continue
            if pkt.pts is None or pkt.is_corrupt:  # a damaged packet (a truncated file's last one) decodes to no
                return None                        # frame that ffmpeg's count would have: decode every frame
            pts.append(pkt.pts)
            if pkt.is_keyframe:
                keys.append(pkt.pts)
    order = sorted(pts)
    if len(set(order)) != len(order):
        return None
    rank = {t: i for i, t in enumerate(order)}
    n = len(order)
    w, h = _out_size(*src_size, p.decode_width)

    def opened():
        c = av.open(path)
        s = c.streams.video[0]
        cc = s.codec_context
        cc.thread_count = max(0, int(p.decode_threads))
        if p.fast_decode:
            cc.options = {"skip_loop_filter": "all"}
        return c, s, cc

    def image(frame):
        return frame.to_ndarray(width=w, height=h, format="bgr24",
                                interpolation="FAST_BILINEAR" if p.fast_decode else "BICUBIC")

    def scorer():  # ContentDetector's own frame score (_calculate_frame_score: against the last frame it saw)
        return _content_detector(p)

    scores = np.full(n, np.nan)
    gaps: list[tuple[int, int]] = []
    decoded = 0
    c, s, cc = opened()
    try:
        cc.skip_frame = p.coarse_skip.upper()
        sc, prev = scorer(), None
        for frame in c.decode(s):
            i = rank.get(frame.pts)
            if i is None or (prev is not None and i <= prev):
                return None
            decoded += 1
            v = sc._calculate_frame_score(i, image(frame))
            if prev is None:
                scores[:i + 1] = 0.0
            elif i - prev == 1:
                scores[i] = v
            elif v >= p.coarse_factor * p.threshold:
                gaps.append((prev, i))
            else:
                scores[prev + 1:i + 1] = 0.0  # a gap whose frames are taken as under the threshold
            prev = i
    finally:
        c.close()
    if prev is None:
        return [], 0, {"decoded": 0, "gap_frames": 0, "candidates": 0}
    scores[prev + 1:] = 0.0  # B-frames after the last reference frame (none in practice)
    gap_frames = 0
    if gaps:
        want = {order[k] for a, b in gaps for k in range(a + 1, b + 1)}
        keyset = sorted(keys)
        got: dict[int, np.ndarray] = {}
        c, s, cc = opened()
        try:
            pos = None  # pts of the last packet fed to the decoder
            for a, b in gaps:
                if all(k in got for k in range(a, b + 1)):
                    continue
                key = max((k for k in keyset if k <= order[a]), default=order[0])
                if pos is None or pos < key:
                    c.seek(key, stream=s, backward=True, any_frame=False)
                    cc.flush_buffers()
                for pkt in c.demux(s):
                    cc.skip_frame = "DEFAULT" if pkt.pts in want else p.coarse_skip.upper()
                    for frame in cc.decode(pkt):
                        i = rank.get(frame.pts)
                        if i is not None and any(x <= i <= y for x, y in gaps):
                            got[i] = image(frame)
                    if pkt.pts is not None:
                        pos = pkt.pts if pos is None else max(pos, pkt.pts)
                    if all(k in got for k in range(a, b + 1)) or pkt.size == 0:
                        break
        finally:
            c.close()
        for a, b in gaps:
            sc = scorer()
            missing = [k for k in range(a, b + 1) if k not in got]
            if missing:  # not decodable this way: the caller decodes every frame
                return None
            for k in range(a, b + 1):
                v = sc._calculate_frame_score(k, got[k])
                if k > a:
                    scores[k] = v
            gap_frames += b - a - 1
    det = _content_detector(p, np.nan_to_num(scores, nan=0.0))
    cuts: list[int] = []
    for k in range(n):
        cuts.extend(det.process_frame(k, None))
    cuts.extend(det.post_process(n))
    return (sorted(x for x in set(cuts) if 0 < x < n), n,
            {"decoded": decoded, "gap_frames": gap_frames, "candidates": len(gaps)})


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
        size = (int(rec.probe["width"]), int(rec.probe["height"]))
        two = None
        # two passes on what libav decodes as it is displayed (a rotated source: ffmpeg's path rotates it)
        if p.two_pass and p.detector == "content" and not rec.probe.get("rotation"):
            import av

            try:
                two = detect_cuts_two_pass(local_path(rec.source), size, p)
            except av.error.FFmpegError:  # what libav cannot read here, ffmpeg's own path reads or rejects with a reason
                two = None
        cuts, n = two[:2] if two is not None else detect_cuts(rec.source, fps, size, p, self.ctx.timeout_s)
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
