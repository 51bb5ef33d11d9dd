"""Sparse frame sampling for the per-clip model stages (person, quality): a few frames per second of a clip,
decoded at a reduced size, streamed in small batches (never a whole clip's frames in memory).

decord is used because it seeks to the sampled frames and converts only those to RGB, which is cheaper than
piping every frame of the span through ffmpeg at the source rate. The sampled frames are resized here to the
display aspect (squaring anamorphic pixels) and turned upright if decord did not apply the rotation: they come
out in the same square-pixel display space as `curation.media.iter_frames` and the writer (so boxes found
here are valid downstream).
If decord cannot open a file, the ffmpeg decode of `curation.media.iter_frames` with an fps filter is used."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from curation.media import iter_frames, local_path


@dataclass(frozen=True)
class SampleGeometry:
    """Display size of the source (probe) and the size frames are decoded at; `scale` maps decoded pixels
    back to display pixels (display = decoded * scale)."""

    width: int
    height: int
    dec_w: int
    dec_h: int

    @property
    def scale_x(self) -> float:
        return self.width / self.dec_w

    @property
    def scale_y(self) -> float:
        return self.height / self.dec_h


def geometry(probe: dict, max_side: int | None = None, short_side: int | None = None) -> SampleGeometry:
    """Decode size for a source: fit the longer side in `max_side`, or set the shorter side to
    `short_side` (never upscaling either way), even sizes, aspect kept."""
    w, h = int(probe["width"]), int(probe["height"])
    r = 1.0
    if max_side:
        r = min(r, max_side / max(w, h))
    if short_side:
        r = min(r, short_side / min(w, h))
    dw, dh = max(2, int(round(w * r / 2)) * 2), max(2, int(round(h * r / 2)) * 2)
    return SampleGeometry(w, h, dw, dh)


def sample_times(start_s: float, end_s: float, fps: float, max_samples: int | None = None) -> np.ndarray:
    """Times of the samples: one in the middle of every 1/fps interval of [start_s, end_s) (so the very
    first and last frames, where cuts blend, are avoided), at least one, at most `max_samples`."""
    dur = max(0.0, end_s - start_s)
    n = max(1, int(np.floor(dur * fps + 1e-9)))
    if max_samples:
        n = min(n, max_samples)
    return start_s + (np.arange(n) + 0.5) * (dur / n)


def _to_display(frame: np.ndarray, geo: SampleGeometry, rotation: int) -> np.ndarray:
    """A decoded frame in the source's display space at the decode size. decord builds may or may not apply
    the rotation metadata themselves (the one here does), so the frame's own shape says whether it is upright
    yet (180 degrees and square frames cannot be told apart that way: decord's rotation is trusted there);
    the resize also squares anamorphic pixels (C1)."""
    import cv2

    h, w = frame.shape[:2]
    if rotation % 180 == 90 and (w > h) != (geo.width > geo.height) and w != h:
        # probe's rotation (media._rotation) is counter-clockwise, like ffprobe's display matrix
        frame = np.rot90(frame, 1 if rotation % 360 == 90 else -1)
    if frame.shape[:2] != (geo.dec_h, geo.dec_w):
        shrink = geo.dec_w < frame.shape[1]
        frame = cv2.resize(frame, (geo.dec_w, geo.dec_h), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
    return np.ascontiguousarray(frame)


def _iter_decord(path: str, times: np.ndarray, geo: SampleGeometry, rotation: int, threads: int,
                 batch: int) -> Iterator[tuple[float, np.ndarray]]:
    import decord

    # Full-size decode, resized here: decord's own resize takes a size in the coded orientation, which
    # depends on whether this decord build rotates; only the sampled frames are converted and resized.
    vr = decord.VideoReader(local_path(path), ctx=decord.cpu(0), num_threads=threads)
    n = len(vr)
    if n == 0:
        return
    # decord's timestamps start at the video stream's first frame; containers whose video starts late
    # (A3: 33 ms) are off by that much, below one frame.
    starts = vr.get_frame_timestamp(np.arange(n))[:, 0]
    idx = np.clip(np.searchsorted(starts, times, side="right") - 1, 0, n - 1)
    idx = np.unique(idx)  # several samples on one frame (very low fps sources): decode it once
    for i in range(0, len(idx), batch):
        chunk = idx[i:i + batch]
        frames = vr.get_batch(list(chunk)).asnumpy()
        for j, fi in enumerate(chunk):
            yield float(starts[fi]), _to_display(frames[j], geo, rotation)
        del frames
    del vr


def iter_samples(path: str, start_s: float, end_s: float, fps: float, geo: SampleGeometry, rotation: int = 0,
                 threads: int = 1, batch: int = 4, max_samples: int | None = None, backend: str = "decord",
                 timeout: float = 600.0) -> Iterator[tuple[float, np.ndarray]]:
    """(source-timeline seconds, HxWx3 RGB uint8 frame at geo.dec size) for the sampled frames of the span."""
    times = sample_times(start_s, end_s, fps, max_samples)
    if backend == "decord":
        try:
            import decord  # noqa: F401

            it = _iter_decord(path, times, geo, rotation, threads, batch)
            first = next(it, None)
        except Exception:  # decord cannot read it (codec, container): fall back to ffmpeg below
            first, it = None, None
        if first is not None:
            yield first
            yield from it
            return
    # ffmpeg fallback: fps filter at the sampling rate over the span (frames come out upright already).
    rate = len(times) / max(end_s - start_s, 1e-6)
    t0 = float(times[0])  # the fps filter's frames fall at t0 + k / rate: the same times as above
    for k, fr in enumerate(iter_frames(path, t0, end_s, fps=rate, size=(geo.dec_w, geo.dec_h),
                                       src_size=(geo.width, geo.height), pix_fmt="rgb24", timeout=timeout,
                                       threads=threads)):
        if k >= len(times):
            break
        yield float(t0 + k / rate), fr
