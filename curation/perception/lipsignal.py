"""Weights-free audio-visual sync: a mouth-opening signal from MediaPipe face landmarks against a speech
envelope of the audio, both at the video rate (25 fps), compared by normalised cross-correlation.

Convention (the whole pipeline's): lag/offset in video frames; positive = the audio lags the video (the
audio that goes with video frame t is at audio frame t + offset)."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

# MediaPipe face-mesh indices: inner-lip pairs (upper, lower) along the mouth, and the outer eye corners
# (their distance, the inter-ocular distance, is the face size that does not move with the jaw).
INNER_LIP_PAIRS = ((13, 14), (82, 87), (312, 317), (81, 178), (311, 402))
EYE_CORNERS = (33, 263)
# Outer and inner lip contours (MediaPipe's FACEMESH_LIPS), the lower face oval (jaw and chin), and the
# reference points that do not move with speech (eye corners, nose bridge and tip).
LIP_POINTS = (61, 146, 91, 181, 84, 17, 314, 405, 321, 375, 291, 185, 40, 39, 37, 0, 267, 269, 270, 409,
              78, 95, 88, 178, 87, 14, 317, 402, 318, 324, 308, 191, 80, 81, 82, 13, 312, 311, 310, 415)
JAW_POINTS = (172, 136, 150, 149, 176, 148, 152, 377, 400, 378, 379, 365, 397)
REF_POINTS = (33, 263, 168, 6, 1)
FACE_POINTS = LIP_POINTS + JAW_POINTS + REF_POINTS  # the landmarks kept per frame, in this order


def point_index(i: int) -> int:
    """Column of MediaPipe landmark `i` in a `points` array of MouthTracker.landmarks."""
    return FACE_POINTS.index(i)


def mouth_opening(points: np.ndarray) -> np.ndarray:
    """Mean inner-lip gap / inter-ocular distance per frame (NaN where no face): the single mouth-opening
    signal of the first landmarks estimator. points: (N, len(FACE_POINTS), 2)."""
    p = np.asarray(points, np.float64)
    if not len(p):
        return np.zeros(0)
    eye = np.linalg.norm(p[:, point_index(EYE_CORNERS[0])] - p[:, point_index(EYE_CORNERS[1])], axis=1)
    gap = np.mean([np.linalg.norm(p[:, point_index(a)] - p[:, point_index(b)], axis=1) for a, b in INNER_LIP_PAIRS], 0)
    return gap / np.maximum(eye, 1e-6)


class MouthTracker:
    """FaceLandmarker in VIDEO mode (detection on the first frame, tracking after) on face crops."""

    def __init__(self, model_path: str, min_confidence: float = 0.5):
        import mediapipe as mp
        from mediapipe.tasks.python import BaseOptions, vision

        self._mp = mp
        opts = vision.FaceLandmarkerOptions(
            base_options=BaseOptions(model_asset_path=str(model_path)),
            running_mode=vision.RunningMode.VIDEO, num_faces=1,
            min_face_detection_confidence=min_confidence, min_face_presence_confidence=min_confidence,
            min_tracking_confidence=min_confidence)
        self._lm = vision.FaceLandmarker.create_from_options(opts)
        self._ts_ms = 0  # VIDEO mode needs increasing timestamps across every call of this instance

    def landmarks(self, frames: Iterable[np.ndarray], fps: float = 25.0) -> dict[str, np.ndarray]:
        """Per frame (RGB uint8): `points` (N, len(FACE_POINTS), 2) float32 pixel coordinates in the crop of
        the landmarks FACE_POINTS (lips, jaw, eyes, nose: what the sync estimators use, a few KB per second),
        NaN where no face was found; `found` (N,) bool."""
        pts_out, found = [], []
        self._ts_ms += 10_000  # a gap between clips: the tracker does not carry a face across clips
        step = 1000.0 / fps
        nan = np.full((len(FACE_POINTS), 2), np.nan, np.float32)
        for k, rgb in enumerate(frames):
            img = self._mp.Image(image_format=self._mp.ImageFormat.SRGB, data=np.ascontiguousarray(rgb))
            res = self._lm.detect_for_video(img, int(self._ts_ms + k * step))
            if not res.face_landmarks:
                pts_out.append(nan)
                found.append(False)
                continue
            lm = res.face_landmarks[0]
            pts_out.append(np.array([[lm[i].x * rgb.shape[1], lm[i].y * rgb.shape[0]] for i in FACE_POINTS],
                                    np.float32))
            found.append(True)
        self._ts_ms += int(len(found) * step) + 1
        pts = np.stack(pts_out) if pts_out else np.zeros((0, len(FACE_POINTS), 2), np.float32)
        return {"points": pts, "found": np.asarray(found, bool)}

    def close(self) -> None:
        self._lm.close()


def face_crops(frames: Iterable[np.ndarray], region: tuple[int, int, int, int], rects: np.ndarray,
               crop_px: int) -> Iterable[np.ndarray]:
    """Square `crop_px` crops, one per decoded frame of `region` (x, y, w, h; decoded at any scale), cut at
    `rects[k]` = [x, y, side, side] (frame pixels); at most len(rects) crops."""
    import cv2

    x0, y0, rw, rh = region
    for k, img in enumerate(frames):
        if k >= len(rects):
            break
        sx, sy = img.shape[1] / rw, img.shape[0] / rh
        x, y, side, _ = rects[k]
        a0, b0 = int(round((x - x0) * sx)), int(round((y - y0) * sy))
        a1, b1 = a0 + max(2, int(round(side * sx))), b0 + max(2, int(round(side * sy)))
        a0, b0 = max(0, a0), max(0, b0)
        crop = img[b0:min(b1, img.shape[0]), a0:min(a1, img.shape[1])]
        if crop.shape[0] != crop_px or crop.shape[1] != crop_px:
            crop = cv2.resize(crop, (crop_px, crop_px), interpolation=cv2.INTER_AREA)
        yield crop


def fill_gaps(x: np.ndarray) -> np.ndarray:
    """Linear interpolation over NaNs (held at the ends); all-NaN stays all-NaN."""
    x = np.asarray(x, np.float64).copy()
    ok = np.isfinite(x)
    if ok.all() or not ok.any():
        return x
    idx = np.arange(len(x))
    x[~ok] = np.interp(idx[~ok], idx[ok], x[ok])
    return x


def speech_envelope(audio: np.ndarray, n_frames: int, rate: int = 16000, fps: float = 25.0,
                    band: tuple[float, float] = (300.0, 3000.0)) -> np.ndarray:
    """Log energy of the band-passed audio in one window per video frame, centred on the frame's time
    (frame k is shown at k / fps): (n_frames,) float64."""
    from scipy import signal

    x = np.asarray(audio, np.float64)
    if len(x) > 32:
        sos = signal.butter(4, [band[0], min(band[1], rate / 2 * 0.95)], btype="bandpass", fs=rate, output="sos")
        x = signal.sosfiltfilt(sos, x) if len(x) > 64 else x
    hop = rate / fps
    half = int(round(hop / 2))
    env = np.empty(n_frames)
    for k in range(n_frames):
        c = int(round(k * hop))
        seg = x[max(0, c - half):c + half]
        env[k] = np.mean(seg * seg) if len(seg) else 0.0
    return np.log(env + 1e-8)


def _prep(x: np.ndarray, detrend_frames: int) -> np.ndarray:
    """Remove the slow trend (moving average over `detrend_frames`) and standardise."""
    x = np.asarray(x, np.float64)
    if detrend_frames and len(x) > detrend_frames:
        k = np.ones(detrend_frames) / detrend_frames
        pad = detrend_frames // 2
        xp = np.pad(x, (pad, detrend_frames - 1 - pad), mode="edge")
        x = x - np.convolve(xp, k, mode="valid")
    s = x.std()
    return (x - x.mean()) / s if s > 1e-12 else np.zeros_like(x)


def lagged_ncc(video: np.ndarray, audio: np.ndarray, max_lag: int = 15, detrend_frames: int = 25) -> np.ndarray:
    """Pearson correlation of video[t] with audio[t + lag] over the overlap, for lag in -max_lag..max_lag:
    (2 * max_lag + 1,) float64, index max_lag is lag 0."""
    n = min(len(video), len(audio))
    v, a = _prep(video[:n], detrend_frames), _prep(audio[:n], detrend_frames)
    out = np.zeros(2 * max_lag + 1)
    for i, lag in enumerate(range(-max_lag, max_lag + 1)):
        if lag >= 0:
            x, y = v[:n - lag], a[lag:]
        else:
            x, y = v[-lag:], a[:n + lag]
        if len(x) < 3 or x.std() < 1e-12 or y.std() < 1e-12:
            continue
        out[i] = float(np.corrcoef(x, y)[0, 1])
    return out


def offset_and_confidence(ncc: np.ndarray, exclude: int = 2) -> tuple[int, float, float]:
    """(best lag in frames (positive = audio lags), confidence, peak correlation). The confidence is how far
    the peak stands above the other lags: the peak correlation minus the median correlation of the lags more
    than `exclude` frames away from it (the neighbours of a true peak are high too: the signals are smooth)."""
    max_lag = (len(ncc) - 1) // 2
    i = int(np.argmax(ncc))
    peak = float(ncc[i])
    far = np.abs(np.arange(len(ncc)) - i) > exclude
    rest = ncc[far]
    conf = peak - float(np.median(rest)) if len(rest) else 0.0
    return i - max_lag, conf, peak
