"""People by body, not by face: MediaPipe PoseLandmarker with several poses per image, so a second person
facing away or too small for a face detector still counts. Each pose becomes a box around its visible
landmarks plus the position of its head (nose, eyes, ears, mouth: landmarks 0-10), used to tell which body
belongs to which face. Heavy imports happen when the detector is built."""

from __future__ import annotations

import threading
import weakref
from dataclasses import dataclass

import numpy as np

HEAD = slice(0, 11)  # MediaPipe pose landmarks 0-10: nose, eyes, ears, mouth corners


@dataclass
class Body:
    box: tuple[float, float, float, float]  # visible landmarks' box, clipped to the image (pixels)
    head: tuple[float, float]  # mean head landmark position (pixels, may lie outside the image)
    n_visible: int


class PoseBodies:
    def __init__(self, task_path: str, num_poses: int = 4, min_detection: float = 0.5, min_presence: float = 0.5,
                 visibility: float = 0.5):
        from mediapipe.tasks.python import BaseOptions, vision

        opts = vision.PoseLandmarkerOptions(
            base_options=BaseOptions(model_asset_path=str(task_path)),
            running_mode=vision.RunningMode.IMAGE, num_poses=num_poses,
            min_pose_detection_confidence=min_detection, min_pose_presence_confidence=min_presence)
        self._lm = vision.PoseLandmarker.create_from_options(opts)
        self._visibility = visibility
        # MediaPipe's own __del__ at interpreter exit fails (a TypeError traceback in every Ray worker's log)
        # because its dispatcher's thread pool is shut down first. Close it before that: threading's exit
        # hooks run in reverse order of registration, so this one runs before concurrent.futures' own.
        hook = getattr(threading, "_register_atexit", None)
        if hook is not None:
            ref = weakref.ref(self)
            hook(lambda: ref() is not None and ref().close())

    def detect(self, rgb: np.ndarray) -> list[Body]:
        import mediapipe as mp

        h, w = rgb.shape[:2]
        res = self._lm.detect(mp.Image(image_format=mp.ImageFormat.SRGB, data=np.ascontiguousarray(rgb)))
        out = []
        for lms in res.pose_landmarks:
            a = np.array([[p.x * w, p.y * h, p.visibility if p.visibility is not None else 1.0] for p in lms])
            vis = a[:, 2] >= self._visibility
            if not vis.any():
                continue
            xs, ys = np.clip(a[vis, 0], 0, w), np.clip(a[vis, 1], 0, h)
            head = a[HEAD, :2].mean(axis=0)
            out.append(Body((float(xs.min()), float(ys.min()), float(xs.max()), float(ys.max())),
                            (float(head[0]), float(head[1])), int(vis.sum())))
        return out

    def close(self) -> None:
        try:
            self._lm.close()
        except Exception:
            pass
