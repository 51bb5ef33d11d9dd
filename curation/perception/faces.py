"""Face detector backends behind one call: `detect(bgr) -> (N, 5) float32 [x0, y0, x1, y1, score]` in the
pixels of the image given.

- `yunet`: OpenCV Zoo YuNet through `cv2.FaceDetectorYN` (MIT weights). Default.
- `scrfd`: InsightFace SCRFD (500M or 2.5G) through `insightface.model_zoo.get_model`. The SCRFD weights are
  InsightFace's: NON-COMMERCIAL RESEARCH USE ONLY (the insightface code is MIT, its pretrained models are not).

Heavy imports happen when a detector is built, never at module import."""

from __future__ import annotations

import numpy as np


class YuNetDetector:
    def __init__(self, model_path: str, score_threshold: float = 0.6, nms_threshold: float = 0.3,
                 top_k: int = 50, threads: int = 1):
        import cv2

        if threads:
            cv2.setNumThreads(threads)
        self._size = (320, 320)
        self._det = cv2.FaceDetectorYN.create(str(model_path), "", self._size, score_threshold, nms_threshold, top_k)

    def detect(self, bgr: np.ndarray) -> np.ndarray:
        h, w = bgr.shape[:2]
        if (w, h) != self._size:
            self._det.setInputSize((w, h))
            self._size = (w, h)
        _, faces = self._det.detect(bgr)
        if faces is None or len(faces) == 0:
            return np.zeros((0, 5), np.float32)
        x, y, bw, bh, score = faces[:, 0], faces[:, 1], faces[:, 2], faces[:, 3], faces[:, 14]
        return np.stack([x, y, x + bw, y + bh, score], axis=1).astype(np.float32)


class SCRFDDetector:
    def __init__(self, model_path: str, score_threshold: float = 0.5, nms_threshold: float = 0.4,
                 input_size: int | None = None, threads: int = 1, use_gpu: bool = False):
        import onnxruntime as ort
        from insightface.model_zoo import get_model

        from curation.perception.ortsession import providers_for

        so = ort.SessionOptions()
        if threads:
            so.intra_op_num_threads = threads
            so.inter_op_num_threads = 1
        self._model = get_model(str(model_path), providers=providers_for(use_gpu), sess_options=so)
        if self._model is None:
            raise RuntimeError(f"insightface could not load a detector from {model_path}")
        self._model.prepare(ctx_id=-1, det_thresh=score_threshold, nms_thresh=nms_threshold)
        # None: the image's own size rounded up to a multiple of 32 (no resampling). A fixed square input
        # rescales every frame: 640 upscales a 512 px close-up until SCRFD misses its face (A1), 416 shrinks
        # a 30 px face in a 640 px frame below what it finds.
        self._input = (input_size, input_size) if input_size else None

    def detect(self, bgr: np.ndarray) -> np.ndarray:
        h, w = bgr.shape[:2]
        size = self._input or (-(-w // 32) * 32, -(-h // 32) * 32)
        boxes, _ = self._model.detect(np.ascontiguousarray(bgr), input_size=size, max_num=0)
        if boxes is None or len(boxes) == 0:
            return np.zeros((0, 5), np.float32)
        return np.asarray(boxes, np.float32)[:, :5]


def make_face_detector(backend: str, model_path: str, score_threshold: float, threads: int = 1,
                       scrfd_input: int | None = None, use_gpu: bool = False):
    if backend == "yunet":
        return YuNetDetector(model_path, score_threshold=score_threshold, threads=threads)
    if backend == "scrfd":
        return SCRFDDetector(model_path, score_threshold=score_threshold, input_size=scrfd_input, threads=threads,
                             use_gpu=use_gpu)
    raise ValueError(f"unknown face backend {backend!r} (yunet or scrfd)")
