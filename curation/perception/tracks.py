"""Face tracks as the single-person stage hands them to later stages.

A track is a plain dict (it travels inside the clip record):
    {"t": [seconds in the source timeline, one per sampled frame],
     "boxes": [[x0, y0, x1, y1] or None per sampled frame]}   # pixels of the decoded (square-pixel) frame
`boxes_at` interpolates it to any times (for example every frame at 25 fps)."""

from __future__ import annotations

import numpy as np


def boxes_at(track: dict, times) -> np.ndarray:
    """(N, 4) float boxes at `times` (seconds, source timeline), linearly interpolated between detections,
    held constant beyond the first/last detection; all-NaN rows if the track has no detection."""
    times = np.asarray(times, dtype=np.float64)
    t = np.asarray(track.get("t", []), dtype=np.float64)
    boxes = track.get("boxes", [])
    have = [i for i, b in enumerate(boxes) if b is not None]
    out = np.full((len(times), 4), np.nan)
    if not have:
        return out
    tt = t[have]
    bb = np.asarray([boxes[i] for i in have], dtype=np.float64)
    for k in range(4):
        out[:, k] = np.interp(times, tt, bb[:, k])
    return out


def frame_times(start_s: float, end_s: float, fps: float) -> np.ndarray:
    """Source-timeline times of the frames of [start_s, end_s) resampled to `fps`."""
    n = max(1, int(round((end_s - start_s) * fps)))
    return start_s + np.arange(n) / fps
