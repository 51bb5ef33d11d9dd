"""`pose.mp4`: the clip at 25 fps with its skeleton drawn over it, for audits (small, H.264, no audio)."""

from __future__ import annotations

import os
import subprocess
import tempfile

import numpy as np

from curation.media.ffmpeg import FFMPEG, MediaError, iter_frames
from curation.formats.wholebody import BODY_EDGES, FACE, HAND_EDGES

COLORS = {"body": (0, 255, 0), "face": (255, 255, 255), "left": (255, 128, 0), "right": (0, 160, 255),
          "box": (255, 0, 255)}


def draw(rgb: np.ndarray, kp: np.ndarray, box=None, scale: float = 1.0, thr: float = 0.3) -> np.ndarray:
    """Draw one frame's (133, 3) keypoints (clip pixels; `scale` maps them to `rgb`) onto a copy of `rgb`."""
    import cv2

    img = np.ascontiguousarray(rgb).copy()
    p = kp[:, :2] * scale
    ok = kp[:, 2] > thr

    def pt(i):
        return int(round(p[i, 0])), int(round(p[i, 1]))

    if box is not None and np.all(np.isfinite(box)):
        b = [int(round(v * scale)) for v in box]
        cv2.rectangle(img, (b[0], b[1]), (b[2], b[3]), COLORS["box"], 1)
    for a, b in BODY_EDGES:
        if ok[a] and ok[b]:
            cv2.line(img, pt(a), pt(b), COLORS["body"], 2, cv2.LINE_AA)
    for a, b in HAND_EDGES:
        if ok[a] and ok[b]:
            cv2.line(img, pt(a), pt(b), COLORS["left" if a < 112 else "right"], 1, cv2.LINE_AA)
    for i in range(FACE.start, FACE.stop):
        if ok[i]:
            cv2.circle(img, pt(i), 1, COLORS["face"], -1, cv2.LINE_AA)
    return img


def render(path: str, start_s: float, keypoints_info: np.ndarray, person_bbox: np.ndarray,
           src_size: tuple[int, int], fps: float = 25.0, max_side: int = 512, crf: int = 28,
           thr: float = 0.3, timeout: float = 600.0) -> bytes:
    """Encode the first T frames of the clip starting at `start_s` (as the writer cuts it) with the skeleton."""
    n = len(keypoints_info)
    w, h = src_size
    r = min(1.0, max_side / max(w, h))
    ow, oh = max(2, int(w * r) // 2 * 2), max(2, int(h * r) // 2 * 2)
    sx = ow / w
    with tempfile.TemporaryDirectory(prefix="talkcurate-pose-") as td:
        out = os.path.join(td, "pose.mp4")
        cmd = [FFMPEG, "-nostdin", "-v", "error", "-y", "-f", "rawvideo", "-pix_fmt", "rgb24",
               "-s", f"{ow}x{oh}", "-r", f"{fps:g}", "-i", "-", "-c:v", "libx264", "-preset", "veryfast",
               "-crf", str(crf), "-pix_fmt", "yuv420p", "-movflags", "+faststart", out]
        proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stderr=subprocess.PIPE)
        last = None
        try:
            frames = iter_frames(path, start_s, start_s + (n + 1) / fps, fps=fps, size=(ow, oh),
                                 src_size=src_size, timeout=timeout)
            for i, fr in enumerate(frames):
                if i >= n:
                    break
                last = fr
                proc.stdin.write(draw(fr, keypoints_info[i, 0], person_bbox[i], sx, thr).tobytes())
            frames.close()
            for j in range(i + 1 if last is not None else 0, n):  # source ended early: hold the last frame
                base = last if last is not None else np.zeros((oh, ow, 3), np.uint8)
                proc.stdin.write(draw(base, keypoints_info[j, 0], person_bbox[j], sx, thr).tobytes())
            proc.stdin.close()
            err = proc.stderr.read()
            rc = proc.wait(timeout=timeout)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        if rc != 0:
            raise MediaError("unreadable", f"pose preview encode failed: {err.decode(errors='replace')[-300:]}")
        with open(out, "rb") as f:
            return f.read()
