"""DWPose (Yang et al. 2023) on onnxruntime: the YOLOX-L person detector and the dw-ll_ucoco_384 whole-body
pose model (RTMPose-l architecture, SimCC head) as the DWPose release ships them (the files rtmlib and the
ControlNet annotator load). Written from the models' published input/output contracts:

  yolox_l.onnx          input (1, 3, 640, 640) float32, the image resized to fit (aspect kept, top-left) on a
                        grey (114) canvas, 0-255, no normalisation; output (1, 8400, 85) raw YOLOX predictions
                        over the stride 8/16/32 grids: cx, cy offsets in grid cells, log w, log h, objectness,
                        80 COCO class scores. Person = class 0; score = objectness x class score.
  dw-ll_ucoco_384.onnx  input (1, 3, 384, 288) float32 (H x W), the person box grown by 1.25, brought to the
                        3:4 aspect and warped onto 288 x 384, normalised with ImageNet mean/std (RGB, 0-255
                        scale); outputs simcc_x (1, 133, 576) and simcc_y (1, 133, 768): 1-D classification
                        over 2x sub-pixel bins (SimCC split ratio 2). Keypoint = argmax / 2 mapped back
                        through the box; score = the smaller of the two maxima. Order: COCO-WholeBody 133.

Images are RGB, as in DWPose's own annotator. Heavy imports happen when a model is built."""

from __future__ import annotations

import numpy as np

MEAN = np.array([123.675, 116.28, 103.53], np.float32)
STD = np.array([58.395, 57.12, 57.375], np.float32)


def _session(path: str, threads: int = 1, use_gpu: bool = False):
    from curation.perception.ortsession import session

    return session(path, threads, use_gpu)


# -- YOLOX person detector ---------------------------------------------------------------------------
def letterbox(img: np.ndarray, size: tuple[int, int]) -> tuple[np.ndarray, float]:
    """Resize to fit (h, w) = `size` keeping aspect, top-left on a 114-grey canvas; returns (canvas, ratio)."""
    import cv2

    h, w = size
    r = min(h / img.shape[0], w / img.shape[1])
    nh, nw = int(img.shape[0] * r), int(img.shape[1] * r)
    canvas = np.full((h, w, 3), 114, np.uint8)
    canvas[:nh, :nw] = cv2.resize(img, (nw, nh), interpolation=cv2.INTER_LINEAR)
    return canvas, r


def yolox_grids(size: tuple[int, int], strides=(8, 16, 32)) -> tuple[np.ndarray, np.ndarray]:
    """Grid cell (x, y) and stride of every YOLOX prediction for an (h, w) input."""
    cells, st = [], []
    for s in strides:
        gh, gw = size[0] // s, size[1] // s
        xv, yv = np.meshgrid(np.arange(gw), np.arange(gh))
        cells.append(np.stack([xv, yv], -1).reshape(-1, 2))
        st.append(np.full((gh * gw, 1), s))
    return np.concatenate(cells).astype(np.float32), np.concatenate(st).astype(np.float32)


def nms(boxes: np.ndarray, scores: np.ndarray, thr: float) -> list[int]:
    order = np.argsort(-scores)
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    keep = []
    while order.size:
        i = order[0]
        keep.append(int(i))
        rest = order[1:]
        xx0 = np.maximum(boxes[i, 0], boxes[rest, 0])
        yy0 = np.maximum(boxes[i, 1], boxes[rest, 1])
        xx1 = np.minimum(boxes[i, 2], boxes[rest, 2])
        yy1 = np.minimum(boxes[i, 3], boxes[rest, 3])
        inter = np.maximum(0, xx1 - xx0) * np.maximum(0, yy1 - yy0)
        iou = inter / np.maximum(areas[i] + areas[rest] - inter, 1e-9)
        order = rest[iou <= thr]
    return keep


def decode_yolox(raw: np.ndarray, size: tuple[int, int], ratio: float, score_thr: float = 0.3,
                 nms_thr: float = 0.45) -> np.ndarray:
    """(N, 5) person boxes [x0, y0, x1, y1, score] in the original image from a (1, A, 85) YOLOX output."""
    p = raw[0].astype(np.float32)
    cells, strides = yolox_grids(size)
    if p.shape[0] != len(cells):
        raise ValueError(f"YOLOX output has {p.shape[0]} predictions, a {size} input needs {len(cells)}")
    cxy = (p[:, :2] + cells) * strides
    wh = np.exp(np.clip(p[:, 2:4], -20, 20)) * strides
    score = p[:, 4] * p[:, 5]  # objectness x person
    ok = score > score_thr
    if not ok.any():
        return np.zeros((0, 5), np.float32)
    boxes = np.concatenate([cxy[ok] - wh[ok] / 2, cxy[ok] + wh[ok] / 2], axis=1) / ratio
    keep = nms(boxes, score[ok], nms_thr)
    return np.concatenate([boxes[keep], score[ok][keep, None]], axis=1).astype(np.float32)


class YoloxPersons:
    def __init__(self, path: str, input_size: tuple[int, int] = (640, 640), score_thr: float = 0.3,
                 nms_thr: float = 0.45, threads: int = 1, use_gpu: bool = False):
        self.sess = _session(path, threads, use_gpu)
        self.input = self.sess.get_inputs()[0].name
        shape = self.sess.get_inputs()[0].shape
        if len(shape) == 4 and all(isinstance(v, int) for v in shape[2:]):
            input_size = (shape[2], shape[3])
        self.size = input_size
        self.score_thr, self.nms_thr = score_thr, nms_thr

    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        canvas, r = letterbox(rgb, self.size)
        x = np.ascontiguousarray(canvas.transpose(2, 0, 1)[None], np.float32)
        raw = self.sess.run(None, {self.input: x})[0]
        return decode_yolox(raw, self.size, r, self.score_thr, self.nms_thr)


# -- RTMPose-style whole-body model (SimCC) ----------------------------------------------------------
def box_center_scale(box, input_wh: tuple[int, int], padding: float = 1.25) -> tuple[np.ndarray, np.ndarray]:
    """Centre and (w, h) of `box` grown by `padding` and widened or heightened to the input's aspect."""
    x0, y0, x1, y1 = [float(v) for v in box[:4]]
    c = np.array([(x0 + x1) / 2, (y0 + y1) / 2], np.float32)
    w, h = (x1 - x0) * padding, (y1 - y0) * padding
    aspect = input_wh[0] / input_wh[1]
    if w > h * aspect:
        h = w / aspect
    else:
        w = h * aspect
    return c, np.array([w, h], np.float32)


def warp_to_input(rgb: np.ndarray, center: np.ndarray, scale: np.ndarray, input_wh: tuple[int, int]) -> np.ndarray:
    import cv2

    iw, ih = input_wh
    s = iw / scale[0]  # scale has the input's aspect, so the x and y factors agree
    m = np.array([[s, 0, iw / 2 - center[0] * s], [0, s, ih / 2 - center[1] * s]], np.float64)
    return cv2.warpAffine(rgb, m, (iw, ih), flags=cv2.INTER_LINEAR)


def decode_simcc(simcc_x: np.ndarray, simcc_y: np.ndarray, center: np.ndarray, scale: np.ndarray,
                 input_wh: tuple[int, int], split_ratio: float = 2.0) -> tuple[np.ndarray, np.ndarray]:
    """(K, 2) keypoints in the original image and (K,) scores from (1, K, Wx) / (1, K, Wy) SimCC outputs."""
    sx, sy = simcc_x[0], simcc_y[0]
    loc = np.stack([sx.argmax(-1), sy.argmax(-1)], -1).astype(np.float32) / split_ratio
    score = np.minimum(sx.max(-1), sy.max(-1)).astype(np.float32)
    kpts = loc / np.array(input_wh, np.float32) * scale + center - scale / 2
    kpts[score <= 0] = 0.0
    return kpts, np.maximum(score, 0.0)


class WholebodyPose:
    def __init__(self, path: str, input_wh: tuple[int, int] = (288, 384), threads: int = 1, use_gpu: bool = False):
        self.sess = _session(path, threads, use_gpu)
        self.input = self.sess.get_inputs()[0].name
        shape = self.sess.get_inputs()[0].shape
        if len(shape) == 4 and all(isinstance(v, int) for v in shape[2:]):
            input_wh = (shape[3], shape[2])
        self.input_wh = input_wh

    def __call__(self, rgb: np.ndarray, box) -> np.ndarray:
        """(133, 3) [x, y, score] for the person in `box` [x0, y0, x1, y1] (pixels of `rgb`)."""
        c, s = box_center_scale(box, self.input_wh)
        img = (warp_to_input(rgb, c, s, self.input_wh).astype(np.float32) - MEAN) / STD
        x = np.ascontiguousarray(img.transpose(2, 0, 1)[None], np.float32)
        simcc_x, simcc_y = self.sess.run(None, {self.input: x})[:2]
        kpts, score = decode_simcc(simcc_x, simcc_y, c, s, self.input_wh)
        return np.concatenate([kpts, score[:, None]], axis=1)


class DWPoseWholebody:
    """YOLOX person boxes, the one on the main person (its face when known, else the most confident), then
    the whole-body model on it. `det_interval` > 1 reuses the last box for that many frames."""

    def __init__(self, det_path: str, pose_path: str, *, score_thr: float = 0.3, nms_thr: float = 0.45,
                 det_interval: int = 1, threads: int = 1, use_gpu: bool = False):
        self.det = YoloxPersons(det_path, score_thr=score_thr, nms_thr=nms_thr, threads=threads, use_gpu=use_gpu)
        self.pose = WholebodyPose(pose_path, threads=threads, use_gpu=use_gpu)
        self.det_interval = max(1, int(det_interval))
        self._n = 0
        self._box = None

    def begin_clip(self) -> None:
        self._n = 0
        self._box = None

    def frame(self, rgb: np.ndarray, face_box=None) -> tuple[np.ndarray, list[float]]:
        h, w = rgb.shape[:2]
        if self._box is None or self._n % self.det_interval == 0:
            self._box = pick_person(self.det(rgb), face_box, w, h)
        self._n += 1
        return self.pose(rgb, self._box), list(self._box)

    def close(self) -> None:
        self.det = self.pose = None


def pick_person(dets: np.ndarray, face_box, width: int, height: int) -> list[float]:
    """The detection holding the face's centre (most confident among those), else the most confident one,
    else the whole image (as rtmlib does without a detection)."""
    if len(dets):
        cand = dets
        if face_box is not None and np.all(np.isfinite(face_box)):
            cx, cy = (face_box[0] + face_box[2]) / 2, (face_box[1] + face_box[3]) / 2
            hold = dets[(dets[:, 0] <= cx) & (cx <= dets[:, 2]) & (dets[:, 1] <= cy) & (cy <= dets[:, 3])]
            if len(hold):
                cand = hold
        b = cand[int(np.argmax(cand[:, 4]))]
        return [float(max(0, b[0])), float(max(0, b[1])), float(min(width, b[2])), float(min(height, b[3]))]
    return [0.0, 0.0, float(width), float(height)]
