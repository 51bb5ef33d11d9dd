"""Per-frame image quality measures on frames at a fixed working resolution (so thresholds do not depend
on the source size): sharpness (variance of the Laplacian), exposure (mean luma, clipped share), motion
between consecutive samples, and BRISQUE (opencv-contrib `cv2.quality`, lower is better)."""

from __future__ import annotations

import numpy as np

# Luma levels at or beyond these count as clipped (crushed blacks, blown highlights); 8-bit full range.
CLIP_LOW, CLIP_HIGH = 4, 251


def to_gray(rgb: np.ndarray) -> np.ndarray:
    import cv2

    return cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY) if rgb.ndim == 3 else rgb


def resize_short(img: np.ndarray, short: int) -> np.ndarray:
    """Resize so the shorter side is `short` (up or down), aspect kept."""
    import cv2

    h, w = img.shape[:2]
    r = short / min(h, w)
    size = (max(1, int(round(w * r))), max(1, int(round(h * r))))
    if size == (w, h):
        return img
    return cv2.resize(img, size, interpolation=cv2.INTER_AREA if r < 1 else cv2.INTER_LINEAR)


def laplacian_var(gray: np.ndarray) -> float:
    """Variance of the 3x3 Laplacian: the classic focus measure (Pech-Pacheco et al. 2000)."""
    import cv2

    return float(cv2.Laplacian(gray, cv2.CV_64F, ksize=3).var())


def exposure(gray: np.ndarray) -> tuple[float, float]:
    """(mean luma 0-255, share of clipped pixels)."""
    clipped = np.count_nonzero((gray <= CLIP_LOW) | (gray >= CLIP_HIGH)) / gray.size
    return float(gray.mean()), float(clipped)


def frame_change(a: np.ndarray, b: np.ndarray, size: int = 64) -> float:
    """Mean absolute luma difference (0-255) between two frames, on copies shrunk to `size` px on the
    short side (insensitive to noise and compression grain, sensitive to anything that moves)."""
    a = resize_short(a, size).astype(np.float32)
    b = resize_short(b, size).astype(np.float32)
    return float(np.abs(a - b).mean())


def global_shift(a: np.ndarray, b: np.ndarray, size: int = 128) -> float:
    """Magnitude of the global translation between two frames (phase correlation), as a share of the
    frame's short side: the camera moving, not a face talking."""
    import cv2

    a = resize_short(a, size).astype(np.float32)
    b = resize_short(b, size).astype(np.float32)
    win = cv2.createHanningWindow((a.shape[1], a.shape[0]), cv2.CV_32F)
    (dx, dy), _ = cv2.phaseCorrelate(a, b, win)
    return float(np.hypot(dx, dy) / size)


class Brisque:
    """BRISQUE with the LIVE model files from opencv_contrib (lower is better, roughly 0-100)."""

    def __init__(self, model_path: str, range_path: str):
        import cv2

        if not hasattr(cv2, "quality"):
            raise RuntimeError("cv2.quality is missing: BRISQUE needs opencv-contrib-python")
        self._q = cv2.quality.QualityBRISQUE_create(str(model_path), str(range_path))

    def __call__(self, gray: np.ndarray) -> float:
        return float(self._q.compute(gray)[0])
