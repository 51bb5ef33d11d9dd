"""Link per-frame detections into tracks by box overlap (IoU), greedily, frame by frame.

Sampled frames are a few per second, so a face moves little between two samples: the best-overlapping open
track (IoU above a threshold, last seen at most `max_gap` samples ago) takes a detection; a detection that
matches nothing opens a new track."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from curation.geometry import iou


@dataclass
class Track:
    id: int
    frames: list[int] = field(default_factory=list)  # sample indices
    boxes: list[list[float]] = field(default_factory=list)  # [x0, y0, x1, y1] per entry of `frames`
    scores: list[float] = field(default_factory=list)

    @property
    def last(self) -> list[float]:
        return self.boxes[-1]

    def heights(self) -> np.ndarray:
        b = np.asarray(self.boxes, np.float64)
        return b[:, 3] - b[:, 1]

    def box_at(self, frame: int) -> list[float] | None:
        try:
            return self.boxes[self.frames.index(frame)]
        except ValueError:
            return None


def link(detections: list[np.ndarray], iou_threshold: float = 0.3, max_gap: int = 2) -> list[Track]:
    """`detections[i]`: (N, >=4) boxes [x0, y0, x1, y1, (score)] of sample i. Returns every track."""
    tracks: list[Track] = []
    for i, dets in enumerate(detections):
        dets = np.asarray(dets, np.float64)
        if dets.ndim != 2:
            dets = dets.reshape(-1, 5)
        order = np.argsort(-dets[:, 4]) if dets.shape[1] > 4 else np.arange(len(dets))
        open_tracks = [t for t in tracks if i - t.frames[-1] <= max_gap + 1]
        pairs = []
        for di in order:
            for t in open_tracks:
                v = iou(dets[di, :4], t.last)
                if v >= iou_threshold:
                    pairs.append((v, int(di), t))
        pairs.sort(key=lambda p: -p[0])
        used_d: set[int] = set()
        used_t: set[int] = set()
        for v, di, t in pairs:
            if di in used_d or t.id in used_t:
                continue
            used_d.add(di)
            used_t.add(t.id)
            t.frames.append(i)
            t.boxes.append([float(x) for x in dets[di, :4]])
            t.scores.append(float(dets[di, 4]) if dets.shape[1] > 4 else 1.0)
        for di in order:
            if int(di) not in used_d:
                t = Track(id=len(tracks))
                t.frames.append(i)
                t.boxes.append([float(x) for x in dets[di, :4]])
                t.scores.append(float(dets[di, 4]) if dets.shape[1] > 4 else 1.0)
                tracks.append(t)
    return tracks


def main_track(tracks: list[Track]) -> Track | None:
    """The track seen in the most samples; ties go to the larger face."""
    if not tracks:
        return None
    return max(tracks, key=lambda t: (len(t.frames), float(np.median(t.heights()))))
