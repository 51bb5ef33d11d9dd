"""Sparse frame sampling for the per-clip model stages (person, quality): a few frames per second of a clip,
decoded at a reduced size (never a whole clip's frames at source size in memory).

decord is used because it seeks to the sampled frames and converts only those to RGB, which is cheaper than
piping every frame of the span through ffmpeg at the source rate. The sampled frames are resized here to the
display aspect (squaring anamorphic pixels) and turned upright if decord did not apply the rotation: they come
out in the same square-pixel display space as `curation.media.ffmpeg.iter_frames` and the writer (so boxes found
here are valid downstream).

decord's frames are decoded by a thread of their own in one tight pass (small batches, each resized at once, the
caller taking frames as they come), in chunks of at most DECODE_BUDGET_BYTES of resized frames (one chunk for
every clip the default manifests allow; the frames are the same however a span is chunked), and decord's
reader is stopped at the end of every chunk. decord (0.6) must not sit idle with a live reader: after a seek
its reader pushes packets ahead while it waits for the first frame, and its decoder thread goes on decoding
those into full-size RGB frames while the caller works, memory held until the reader is destroyed
(dmlc/decord #157, #208). Streamed to the person stage's detectors batch by batch, one 50-s clip of a 640x360
source grew by ~0.8 GB that way and the stage took ~1.5 CPU-s more (5.3 instead of 3.8).
If decord cannot open a file, the ffmpeg decode of `curation.media.ffmpeg.iter_frames` with an fps filter is used."""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from curation.media.ffmpeg import MediaError, iter_frames, local_path

log = logging.getLogger(__name__)


class DecordUnsupported(Exception):
    """decord could not open or decode the file (what decord raises for input it cannot read: RuntimeError
    from its reader, decord's own DECORDError)."""


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


# Resized frames decoded per chunk before decord's reader is stopped (see above).
DECODE_BUDGET_BYTES = 256 * 1024 * 1024

# Memory a decode takes per source pixel (display width x height), measured with iter_samples at 3 fps, batch 4,
# one thread (RSS growth over the process before the decode; bench/bench_memory_stages.py --decode):
#   decord (full-size RGB frames, resized here): 8K testsrc2 7680x4320 +1.22 GiB (37 B/px), S03 1080p +92 MB (44 B/px)
#   ffmpeg (scaled in ffmpeg, small frames here): 8K: +3 MB in this process, 206 MB peak in the ffmpeg child (6.2 B/px)
DECORD_BYTES_PER_PIXEL = 48
FFMPEG_BYTES_PER_PIXEL = 8
_memory_request: int | None = None
_memory_held: dict[int, int] = {}  # request -> what the worker held at its first decode under it


def set_memory_request(nbytes: int | None) -> None:
    """The memory request of the stage this worker runs (resources.memory_gb, in bytes; None: no limit), set by the
    pipeline's workers around each batch. What a decode may take is that request less what the worker held at its
    first decode under it (its models loaded by then; remembered per request, so that a source is read the same
    way whichever batch it comes in). A source whose full-size decord decode would take more is read at the decode
    size by ffmpeg instead (frames scaled in ffmpeg: this process holds only them); one whose ffmpeg decode would
    take more still is rejected (`too_large`)."""
    global _memory_request
    _memory_request = nbytes


def memory_budget() -> int | None:
    """Bytes a decode may take now (None: no limit); see set_memory_request."""
    if _memory_request is None:
        return None
    if _memory_request not in _memory_held:
        held = _memory_held[_memory_request] = _rss_bytes()
        if held >= _memory_request:
            log.warning("this worker holds %.2f GiB, more than its stage's memory request (resources.memory_gb %.2f): "
                        "every source it decodes is rejected as too_large; raise memory_gb", held / 2**30,
                        _memory_request / 2**30)
    return max(0, _memory_request - _memory_held[_memory_request])


def _rss_bytes() -> int:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def decode_plan(geo: SampleGeometry, backend: str) -> str:
    """`backend` where its decode of a source of this size fits the memory budget, else "ffmpeg" (decord's would
    not), else raises MediaError("too_large")."""
    budget = memory_budget()
    if budget is None:
        return backend
    px = geo.width * geo.height
    if backend == "decord" and px * DECORD_BYTES_PER_PIXEL <= budget:
        return backend
    if px * FFMPEG_BYTES_PER_PIXEL <= budget:
        return "ffmpeg"
    raise MediaError("too_large", f"a {geo.width}x{geo.height} source needs about "
                                  f"{px * FFMPEG_BYTES_PER_PIXEL / 2**30:.2f} GiB to decode even scaled by ffmpeg; "
                                  f"the stage has {budget / 2**30:.2f} GiB left of its memory request "
                                  f"(resources.memory_gb)")


_CHUNK_END, _DONE = object(), object()


class _Failed:
    def __init__(self, exc: BaseException):
        self.exc = exc


def _decode_decord(path: str, times: np.ndarray, geo: SampleGeometry, rotation: int, threads: int, batch: int,
                   out: queue.SimpleQueue, drained: threading.Event, stop: threading.Event) -> None:
    """The decoding thread: (time, frame) items into `out`, _CHUNK_END after each chunk (then it waits for
    `drained`: the caller has taken the chunk), an exception as _Failed, and _DONE last."""
    try:
        import decord
        from decord._ffi.base import DECORDError

        # Full-size decode, resized here: decord's own resize takes a size in the coded orientation, which
        # depends on whether this decord build rotates; only the sampled frames are converted and resized.
        try:
            vr = decord.VideoReader(local_path(path), ctx=decord.cpu(0), num_threads=threads)
        except (RuntimeError, DECORDError) as e:
            raise DecordUnsupported(str(e)[:500]) from e
        n = len(vr)
        if n == 0:
            return
        # decord's timestamps start at the video stream's first frame; containers whose video starts late
        # (A3: 33 ms) are off by that much, below one frame.
        starts = vr.get_frame_timestamp(np.arange(n))[:, 0]
        idx = np.clip(np.searchsorted(starts, times, side="right") - 1, 0, n - 1)
        idx = np.unique(idx)  # several samples on one frame (very low fps sources): decode it once
        per_chunk = max(batch, DECODE_BUDGET_BYTES // (geo.dec_w * geo.dec_h * 3))
        for c in range(0, len(idx), per_chunk):
            chunk = idx[c:c + per_chunk]
            for i in range(0, len(chunk), batch):
                if stop.is_set():
                    return
                part = chunk[i:i + batch]
                try:
                    frames = vr.get_batch(list(part)).asnumpy()
                except (RuntimeError, DECORDError) as e:
                    raise DecordUnsupported(str(e)[:500]) from e
                for j, fi in enumerate(part):
                    out.put((float(starts[fi]), _to_display(frames[j], geo, rotation)))
                del frames
            if c + per_chunk >= len(idx):
                break
            vr.seek(0)  # stops decord's decoder thread; the next chunk seeks to its own keyframe
            drained.clear()
            out.put(_CHUNK_END)
            while not drained.wait(0.5):
                if stop.is_set():
                    return
    except Exception as e:  # handed to the caller, at the point of the stream where it happened
        out.put(_Failed(e))
    finally:
        vr = None  # noqa: F841 - the reader, and decord's decoder thread with it, go before _DONE
        out.put(_DONE)


def _iter_decord(path: str, times: np.ndarray, geo: SampleGeometry, rotation: int, threads: int,
                 batch: int) -> Iterator[tuple[float, np.ndarray]]:
    out: queue.SimpleQueue = queue.SimpleQueue()
    drained, stop = threading.Event(), threading.Event()
    worker = threading.Thread(target=_decode_decord, name="decord-samples", daemon=True,
                              args=(path, times, geo, rotation, threads, batch, out, drained, stop))
    worker.start()
    try:
        while True:
            try:
                item = out.get(timeout=0.05)  # short waits: a stage time limit (an async exception) gets in
            except queue.Empty:
                continue
            if item is _DONE:
                return
            if item is _CHUNK_END:
                drained.set()
            elif isinstance(item, _Failed):
                raise item.exc
            else:
                yield item
    finally:
        stop.set()
        drained.set()
        worker.join(5.0)  # at most one batch to finish; one stuck in native code is left behind (a daemon)


def iter_samples(path: str, start_s: float, end_s: float, fps: float, geo: SampleGeometry, rotation: int = 0,
                 threads: int = 1, batch: int = 4, max_samples: int | None = None, backend: str = "decord",
                 timeout: float = 600.0) -> Iterator[tuple[float, np.ndarray]]:
    """(source-timeline seconds, HxWx3 RGB uint8 frame at geo.dec size) for the sampled frames of the span."""
    times = sample_times(start_s, end_s, fps, max_samples)
    planned = decode_plan(geo, backend)
    if planned != backend:
        log.info("%s: %dx%d is too large to decode at full size within the stage's memory: read at %dx%d by ffmpeg",
                 path, geo.width, geo.height, geo.dec_w, geo.dec_h)
        backend = planned
    if backend == "decord":
        try:
            import decord  # noqa: F401

            it = _iter_decord(path, times, geo, rotation, threads, batch)
            first = next(it, None)
        except DecordUnsupported as e:  # decord cannot read it (codec, container): ffmpeg below
            log.warning("decord cannot read %s (%s): decoding with ffmpeg instead", path, e)
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
