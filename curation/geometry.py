"""Boxes in pixels, one place: [x0, y0, x1, y1] boxes (floats, display pixels) and (x, y, w, h) integer crops.

IoU, growing a box by a share of its size, point-in-box, unions, clipping to the frame, the box around a set
of points, and the crops decoders take (square crops centred on a box, crops with even sides)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

Box = Sequence[float]


def iou(a: Box, b: Box) -> float:
    """Intersection over union of two boxes (0 when either is empty)."""
    x0, y0 = max(a[0], b[0]), max(a[1], b[1])
    x1, y1 = min(a[2], b[2]), min(a[3], b[3])
    inter = max(0.0, x1 - x0) * max(0.0, y1 - y0)
    ua = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / ua) if ua > 0 else 0.0


def center(box: Box) -> tuple[float, float]:
    return (box[0] + box[2]) / 2, (box[1] + box[3]) / 2


def expand(box: Box, k: float) -> tuple[float, float, float, float]:
    """The box grown by `k` times its width (height) on the left and right (top and bottom)."""
    x0, y0, x1, y1 = box
    w, h = x1 - x0, y1 - y0
    return x0 - k * w, y0 - k * h, x1 + k * w, y1 + k * h


def contains(box: Box, pt: Sequence[float]) -> bool:
    """Whether point `pt` (x, y) lies in the box, edges included."""
    return box[0] <= pt[0] <= box[2] and box[1] <= pt[1] <= box[3]


def clip(box: Box, width: float, height: float) -> list[float]:
    """The box clipped to a width x height frame."""
    return [max(0.0, box[0]), max(0.0, box[1]), min(width, box[2]), min(height, box[3])]


def union(boxes: Iterable[Box]) -> list[float]:
    """The smallest box holding all of `boxes` (at least one)."""
    u = np.asarray(list(boxes), np.float64)
    return [float(u[:, 0].min()), float(u[:, 1].min()), float(u[:, 2].max()), float(u[:, 3].max())]


def points_box(points: np.ndarray, width: int, height: int, grow: float = 0.0) -> list[float] | None:
    """The box around (N, 2) points, grown by `grow` of its size on every side and clipped to the frame;
    None without points."""
    if len(points) == 0:
        return None
    x0, y0 = points.min(axis=0)
    x1, y1 = points.max(axis=0)
    return [float(v) for v in clip(expand((x0, y0, x1, y1), grow), width, height)]


def square_crop(box: Box, scale: float, width: int, height: int) -> tuple[int, int, int, int]:
    """An (x, y, w, h) square crop centred on `box`, `scale` times its larger side, clipped to the frame."""
    x0, y0, x1, y1 = box
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    side = max(x1 - x0, y1 - y0) * scale
    side = int(min(side, width, height)) // 2 * 2
    x = int(np.clip(cx - side / 2, 0, width - side))
    y = int(np.clip(cy - side / 2, 0, height - side))
    return x, y, max(2, side), max(2, side)


def even_crop(box: Box, margin: float, width: int, height: int) -> tuple[int, int, int, int]:
    """(x, y, w, h) of the box grown by `margin` of its size on each side, clipped to the frame, with even
    sides (what a yuv420 decoder crops) and at least 2 pixels."""
    x0, y0, x1, y1 = [float(v) for v in box]
    mw, mh = (x1 - x0) * margin, (y1 - y0) * margin
    x0, y0 = max(0, int(np.floor(x0 - mw))), max(0, int(np.floor(y0 - mh)))
    x1, y1 = min(width, int(np.ceil(x1 + mw))), min(height, int(np.ceil(y1 + mh)))
    w, h = max(2, (x1 - x0) // 2 * 2), max(2, (y1 - y0) // 2 * 2)
    return min(x0, width - w), min(y0, height - h), w, h
