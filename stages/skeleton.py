"""Skeleton: COCO-WholeBody keypoints (133 per frame) on every frame of each kept clip at 25 fps, written into
the shard sample as `pose.npz` the way TalkVerse stores DWPose output (curation/pose_npz.py).

Each clip is decoded once, at 25 fps exactly as the writer cuts it (same seek, same fps filter, first T =
round((end_s - start_s) * 25) frames), cropped to the person stage's person box grown by `crop_margin` and
scaled to at most `work_size` pixels on its longer side. Keypoints are mapped back to the written clip's
pixels (the writer does not resize: clip pixels = the source's square-pixel display pixels).

Backends:
  mediapipe (default)  PoseLandmarker + HandLandmarker + FaceLandmarker in VIDEO mode (curation/mp_wholebody.py,
                       tables in curation/wholebody.py). The FaceLandmarker runs on a square crop around the
                       person stage's face track (`face_crop_scale` x the face box, resampled to
                       `face_crop_size`), so the face gets the same pixels whatever the shot size.
  dwpose               DWPose's YOLOX-L + dw-ll_ucoco_384 ONNX models (curation/dwpose.py) from the weights
                       directory; missing files fail the run at start-up, naming the files and their URLs.

`person_bbox_xyxy`: dwpose, the YOLOX box of the person; mediapipe, the box around the frame's keypoints
(score above `kpt_thr`, inside the frame) and the face track's box, grown by 10 % and clipped to the frame;
the person stage's crop box where nothing was found.

Audit columns: pose_body_score, pose_face_score, pose_hand_score, pose_both_hands_frac,
pose_out_of_frame_frac (curation.formats.pose_npz.summarize), pose_frames, pose_backend. Optional thresholds
(None = record only) reject with reason `low_pose_conf`. `preview: true` adds `pose.mp4` (skeleton drawn on
the clip) to the sample."""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import Field

from curation import geometry
from curation.formats import pose_npz
from curation.media.ffmpeg import iter_frames
from curation.engine.record import ClipRecord
from curation.perception.tracks import boxes_at, frame_times
from stages.base import Check, Params, Stage


class SkeletonParams(Params):
    backend: Literal["mediapipe", "dwpose"] = "mediapipe"
    work_size: int = Field(512, ge=64, description="the person crop is decoded with its longer side at most this")
    crop_margin: float = Field(0.15, ge=0, description="person box grown by this share of its size on each side")
    face_crop: bool = Field(True, description="run the FaceLandmarker on a crop around the face track")
    face_crop_scale: float = Field(1.6, ge=1.0, description="face crop side / larger side of the face box")
    face_crop_size: int = Field(256, ge=64, description="face crop resampled to this square size (pixels)")
    min_detection: float = Field(0.5, gt=0, lt=1, description="MediaPipe detection confidence")
    min_presence: float = Field(0.5, gt=0, lt=1, description="MediaPipe presence confidence (keeps a track)")
    min_tracking: float = Field(0.5, gt=0, lt=1, description="MediaPipe tracking confidence")
    hand_gate: bool = Field(True, description="skip the hand landmarker on frames where the pose puts both hands out of the image")
    hand_search_every: int = Field(3, ge=1, description="while no hand is tracked, search for hands on every Nth frame only")
    kpt_thr: float = Field(0.3, ge=0, lt=1, description="a keypoint counts as found above this score (summaries, boxes, preview)")
    dwpose_det_thr: float = Field(0.3, ge=0, lt=1, description="YOLOX person score threshold")
    dwpose_det_interval: int = Field(1, ge=1, description="run the YOLOX detector every this many frames")
    threads: int = Field(1, ge=0, description="onnxruntime / ffmpeg threads per actor (0 = library default)")
    preview: bool = Field(False, description="also write pose.mp4, the skeleton drawn over the clip")
    preview_max_side: int = Field(512, ge=64)
    # -- optional thresholds (None: recorded only) -> low_pose_conf --
    min_body_score: float | None = Field(None, ge=0, description="mean body keypoint score")
    min_face_score: float | None = Field(None, ge=0, description="mean face keypoint score")
    min_hand_score: float | None = Field(None, ge=0, description="mean hand keypoint score")
    min_both_hands_frac: float | None = Field(None, ge=0, le=1, description="share of frames with both hands")
    max_out_of_frame_frac: float | None = Field(None, ge=0, le=1, description="share of frames with the person out of the frame")
    bbox_grow: float = Field(0.1, ge=0, description="mediapipe person_bbox_xyxy: the keypoints' box grown by this share of its size on each side")

    checks = (
        Check("pose_body_score", "min_body_score", "min", "low_pose_conf", "mean body keypoint score too low"),
        Check("pose_face_score", "min_face_score", "min", "low_pose_conf", "mean face keypoint score too low"),
        Check("pose_hand_score", "min_hand_score", "min", "low_pose_conf", "mean hand keypoint score too low"),
        Check("pose_both_hands_frac", "min_both_hands_frac", "min", "low_pose_conf", "both hands seen on too few frames"),
        Check("pose_out_of_frame_frac", "max_out_of_frame_frac", "max", "low_pose_conf",
              "the person is out of the frame on too many frames"),
    )


def person_crop(rec: ClipRecord, margin: float) -> tuple[int, int, int, int]:
    """(x, y, w, h) of the person box grown by `margin` on each side, clipped to the frame, even sizes;
    the whole frame without a person box."""
    W, H = int(rec.probe["width"]), int(rec.probe["height"])
    box = rec.data.get("person_box")
    if not box:
        return 0, 0, W, H
    return geometry.even_crop(box, margin, W, H)


class SkeletonStage(Stage):
    name = "skeleton"
    Params = SkeletonParams
    params: SkeletonParams
    uses_models = True
    records = {"pose_frames": "frames with keypoints (the clip's frames at the video rate)"}
    labels = {"pose_backend": "the keypoint backend (mediapipe or dwpose)"}

    def __init__(self, params: SkeletonParams, ctx):
        super().__init__(params, ctx)
        self._model = None

    @classmethod
    def required_weights(cls, params: SkeletonParams) -> list[str]:
        if params.backend == "dwpose":
            return ["dwpose_yolox_l", "dwpose_ll_ucoco_384"]
        return ["pose_landmarker", "hand_landmarker", "face_landmarker"]

    def setup(self) -> None:
        p = self.params
        paths = [self.weight(n) for n in self.required_weights(p)]
        if p.backend == "dwpose":
            from curation.perception.dwpose import DWPoseWholebody

            self._model = DWPoseWholebody(*paths, score_thr=p.dwpose_det_thr, det_interval=p.dwpose_det_interval,
                                          threads=p.threads, use_gpu=self.ctx.use_gpu)
        else:
            from curation.perception.mp_wholebody import MediaPipeWholebody

            self._model = MediaPipeWholebody(
                *paths, min_detection=p.min_detection, min_presence=p.min_presence, min_tracking=p.min_tracking,
                hand_gate=p.hand_gate, hand_search_every=p.hand_search_every, face_crop_size=p.face_crop_size,
                frame_ms=int(round(1000 / self.ctx.fps)))

    def _load(self):
        """The keypoint model (set up on first use)."""
        self.ensure_setup()
        return self._model

    def estimate(self, rec: ClipRecord) -> tuple[np.ndarray, np.ndarray]:
        """keypoints_info (T, 1, 133, 3) and person_bbox_xyxy (T, 4) in the written clip's pixels."""
        p: SkeletonParams = self.params
        model = self._load()
        fps = self.ctx.fps
        W, H = int(rec.probe["width"]), int(rec.probe["height"])
        times = frame_times(rec.start_s, rec.end_s, fps)
        T = len(times)
        cx, cy, cw, ch = person_crop(rec, p.crop_margin)
        track = rec.data.get("face_track")
        faces = boxes_at(track, times) if track else np.full((T, 4), np.nan)
        kpts = np.zeros((T, 1, 133, 3), np.float32)
        boxes = np.zeros((T, 4), np.float32)
        crop_box = [float(cx), float(cy), float(cx + cw), float(cy + ch)]
        model.begin_clip()
        n = 0
        frames = iter_frames(rec.source, rec.start_s, rec.start_s + (T + 1) / fps, fps=fps,
                             size=(min(p.work_size, cw), min(p.work_size, ch)), crop=(cx, cy, cw, ch),
                             threads=p.threads, timeout=self.ctx.timeout_s)
        try:
            for frame in frames:
                if n >= T:
                    break
                fh, fw = frame.shape[:2]
                sx, sy = cw / fw, ch / fh
                face = faces[n]
                face_w = None
                if np.all(np.isfinite(face)):
                    face_w = [(face[0] - cx) / sx, (face[1] - cy) / sy, (face[2] - cx) / sx, (face[3] - cy) / sy]
                if p.backend == "dwpose":
                    kp, box = model.frame(frame, face_w)
                    box = [cx + box[0] * sx, cy + box[1] * sy, cx + box[2] * sx, cy + box[3] * sy]
                else:
                    kp = model.frame(frame, face_w if p.face_crop else None, p.face_crop_scale)
                    box = None
                found = (kp[:, 2] > 0) | (kp[:, 0] != 0) | (kp[:, 1] != 0)
                kp[found, 0] = cx + kp[found, 0] * sx
                kp[found, 1] = cy + kp[found, 1] * sy
                if box is None:
                    box = self._box(kp, face, W, H) or crop_box
                kpts[n, 0] = kp
                boxes[n] = box
                n += 1
        finally:
            frames.close()
        if n == 0:
            raise RuntimeError("no frame could be decoded for the skeleton")
        if n < T:  # the source ended a frame or two early: the writer holds its last frame, so do we
            kpts[n:] = kpts[n - 1]
            boxes[n:] = boxes[n - 1]
        return kpts, boxes

    def _box(self, kp: np.ndarray, face, W: int, H: int):
        b = pose_npz.keypoint_box(kp, W, H, self.params.kpt_thr, expand=self.params.bbox_grow)
        if np.all(np.isfinite(face)):
            f = geometry.clip(face, W, H)
            b = f if b is None else geometry.union([b, f])
        return b

    def process_one(self, rec: ClipRecord) -> ClipRecord:
        p = self.params
        kpts, boxes = self.estimate(rec)
        rec.blobs["pose.npz"] = pose_npz.encode(kpts, boxes)
        summary = pose_npz.summarize(kpts, int(rec.probe["width"]), int(rec.probe["height"]), p.kpt_thr)
        self.record(rec, "pose_frames", len(kpts))
        self.label(rec, "pose_backend", p.backend)
        for name, value in summary.items():  # a bound of None records the score only
            self.check(rec, name, value)
        if p.preview:
            from curation.media.pose_preview import render

            rec.blobs["pose.mp4"] = render(rec.source, rec.start_s, kpts, boxes,
                                           (int(rec.probe["width"]), int(rec.probe["height"])), fps=self.ctx.fps,
                                           max_side=p.preview_max_side, thr=p.kpt_thr, timeout=self.ctx.timeout_s)
        return rec

    def close(self) -> None:
        if self._model is not None:
            self._model.close()
        self._model = None
        self._set_up = False
