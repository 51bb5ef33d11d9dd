"""Skeleton: COCO-WholeBody keypoints (133 per frame) on every frame of each kept clip at 25 fps, written into
the shard sample as `pose.npz` the way TalkVerse stores DWPose output (curation/pose_npz.py).

Each clip is decoded once, at the video rate exactly as the writer cuts it (same seek, same fps filter, first
T = round((end_s - start_s) * fps) frames), cropped to the person stage's person box grown by `crop_margin` and
scaled to at most `work_size` pixels on its longer side. Keypoints are mapped back to the written clip's
pixels: the source's square-pixel display pixels scaled to the manifest's `video.max_side` as the write stage
scales the clip (curation.media.ffmpeg.clip_size); `estimate(rec, out_side=None)` gives source pixels.

Cost (bench/bench_skeleton.py measures each choice per part and its pixel error against running every part
on every frame): with `pose_every` / `face_every` = N the pose + hand landmarkers / the face landmarker run
on every Nth frame and the last, in VIDEO mode (they track between the frames they see), and the frames
between are interpolated linearly per point (`fill_between`).

Face keypoints from landmarks computed elsewhere (issue 16 item 1): the sync stage's landmarks backend runs a
FaceLandmarker on every frame of the clip at the video rate and hands on the 68 iBUG points of each frame as
rec.data["face68"] ((T, 68, 2) float32, the source's display pixels, NaN where it found no face;
curation/perception/mp_wholebody.py face_mesh_tracker / crop_points_to_frame). With `face_from_sync` the
skeleton makes its face keypoints from them (MediaPipeWholebody.face_points, the same score as its own) and runs
its own face landmarker only on the frames without; a clip the sync stage did not landmark (sync off, the
syncnet backend) gets the skeleton's own face landmarker as before. `estimate(rec, face_mesh=...)` takes such
points (or whole (T, 478, 2) meshes) directly. The stage pops rec.data["face68"] once used.

Backends:
  mediapipe (default)  PoseLandmarker + HandLandmarker + FaceLandmarker in VIDEO mode (curation/mp_wholebody.py,
                       tables in curation/wholebody.py). The FaceLandmarker runs on a square crop around the
                       person stage's face track (`face_crop_scale` x the face box, resampled to
                       `face_crop_size`), so the face gets the same pixels whatever the shot size.
  dwpose               DWPose's YOLOX-L + dw-ll_ucoco_384 ONNX models (curation/dwpose.py) from the weights
                       directory; missing files fail the run at start-up, naming the files and their URLs.

`person_bbox_xyxy`: dwpose, the YOLOX box of the person; mediapipe (`person_box: mask`, the default), the box
of the pose model's person segmentation mask (pixels above `mask_thr`): it holds the top of the head, the hair
and both shoulders, which a box around keypoints (joints) leaves out; where the model found no person, or with
`person_box: keypoints`, the box around the frame's keypoints (score above `kpt_thr`, inside the frame) and
the face track's box, grown by `bbox_grow` (10 %) and clipped to the frame; the person stage's crop box where nothing was
found. The mask is computed on the decoded person crop, so a box is at most that crop.

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
from curation.formats.wholebody import FACE
from curation.media.ffmpeg import clip_size, iter_frames
from curation.engine.record import ClipRecord
from curation.perception.tracks import boxes_at, frame_times
from stages.base import Check, Params, Stage


class SkeletonParams(Params):
    backend: Literal["mediapipe", "dwpose"] = "mediapipe"
    work_size: int = Field(512, ge=64, description="the person crop is decoded with its longer side at most this")
    crop_margin: float = Field(0.15, ge=0, description="person box grown by this share of its size on each side")
    crop_top_margin: float = Field(0.3, ge=0, description="... and by this share of its height above (the person "
                                                           "stage's box ends at the face box, below the top of the head)")
    face_crop: bool = Field(True, description="run the FaceLandmarker on a crop around the face track")
    face_crop_scale: float = Field(1.6, ge=1.0, description="face crop side / larger side of the face box")
    face_crop_size: int = Field(256, ge=64, description="face crop resampled to this square size (pixels)")
    min_detection: float = Field(0.5, gt=0, lt=1, description="MediaPipe detection confidence")
    min_presence: float = Field(0.5, gt=0, lt=1, description="MediaPipe presence confidence (keeps a track)")
    min_tracking: float = Field(0.5, gt=0, lt=1, description="MediaPipe tracking confidence")
    hand_gate: bool = Field(True, description="skip the hand landmarker on frames where the pose puts both hands out of the image")
    hand_search_every: int = Field(3, ge=1, description="while no hand is tracked, search for hands on every Nth frame only")
    pose_every: int = Field(1, ge=1, description="mediapipe: pose and hand landmarkers on every Nth frame (and the last); "
                            "the frames between are interpolated (bench/bench_skeleton.py: cost and pixel error)")
    face_every: int = Field(1, ge=1, description="mediapipe: face landmarker on every Nth frame (and the last), the rest interpolated")
    face_from_sync: bool = Field(False, description="mediapipe: face keypoints from the sync stage's per-frame face landmarks "
                                 "(rec.data['face68']) where it measured them; the skeleton's own face landmarker runs "
                                 "only on the frames without (and on every clip the sync stage did not landmark)")
    kpt_thr: float = Field(0.3, ge=0, lt=1, description="a keypoint counts as found above this score (summaries, boxes, preview)")
    person_box: Literal["mask", "keypoints"] = Field(
        "mask", description="mediapipe person_bbox_xyxy: the person segmentation mask's box, or the keypoints' box + 10 %")
    mask_thr: float = Field(0.5, gt=0, lt=1, description="a pixel belongs to the person above this mask probability")
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


BODY_AND_HANDS = np.r_[0:23, 91:133]


def fill_between(kp: np.ndarray, ran: np.ndarray) -> None:
    """In place: (T, K, 3) keypoints computed only on frames where `ran`; every other frame gets, per point,
    the linear interpolation of the computed frames before and after it where the point was found on both,
    else the nearer computed frame's value (not found stays not found)."""
    idx = np.flatnonzero(ran)
    if len(idx) == 0:
        return
    found = (kp[..., 2] > 0) | (kp[..., 0] != 0) | (kp[..., 1] != 0)
    for t in np.flatnonzero(~ran):
        j = np.searchsorted(idx, t)
        if j == 0 or j == len(idx):
            kp[t] = kp[idx[min(j, len(idx) - 1)]]
            continue
        a, b = idx[j - 1], idx[j]
        w = (t - a) / (b - a)
        both = found[a] & found[b]
        near = kp[a] if w <= 0.5 else kp[b]
        kp[t] = np.where(both[:, None], (1 - w) * kp[a] + w * kp[b], near)


def scale_to(kpts: np.ndarray, boxes: np.ndarray, src: tuple[int, int], out: tuple[int, int]):
    """Keypoints (T, 1, K, 3) and boxes (T, 4) from `src` (w, h) pixels to `out` pixels (copies when they
    differ; not-found points stay (0, 0, 0))."""
    if tuple(out) == tuple(src):
        return kpts, boxes
    k = np.array([out[0] / src[0], out[1] / src[1]], np.float32)
    kpts = kpts.copy()
    found = (kpts[..., 2] > 0) | (kpts[..., 0] != 0) | (kpts[..., 1] != 0)
    kpts[..., :2] = np.where(found[..., None], kpts[..., :2] * k, 0.0)
    return kpts, (boxes * np.tile(k, 2)).astype(np.float32)


def person_crop(rec: ClipRecord, margin: float, top_margin: float | None = None) -> tuple[int, int, int, int]:
    """(x, y, w, h) of the person box grown by `margin` on each side (`top_margin` above, when given), clipped
    to the frame, even sizes; the whole frame without a person box."""
    W, H = int(rec.probe["width"]), int(rec.probe["height"])
    box = rec.data.get("person_box")
    if not box:
        return 0, 0, W, H
    return geometry.even_crop(box, margin, W, H, top_margin)


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
                frame_ms=int(round(1000 / self.ctx.fps)), segmentation=p.person_box == "mask", mask_thr=p.mask_thr)

    def _load(self):
        """The keypoint model (set up on first use)."""
        self.ensure_setup()
        return self._model

    def out_size(self, rec: ClipRecord) -> tuple[int, int]:
        """The written clip's size (the manifest's video.max_side applied by the write stage)."""
        return clip_size(int(rec.probe["width"]), int(rec.probe["height"]), self.ctx.video.get("max_side"))

    def estimate(self, rec: ClipRecord, out_side: int | None | str = "manifest",
                 face_mesh: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """keypoints_info (T, 1, 133, 3) and person_bbox_xyxy (T, 4) in the written clip's pixels (its
        longer side at most `out_side`: by default the manifest's video.max_side, None: the source's pixels).

        `face_mesh` (T, 478, 2) FaceLandmarker meshes or (T, 68, 2) iBUG points per frame in the source's
        display pixels (NaN where no face) that another stage already computed (default, with
        `face_from_sync`: the sync stage's rec.data["face68"]): the face keypoints are then made from them
        and the skeleton's own face landmarker runs only on frames without (mediapipe backend)."""
        p: SkeletonParams = self.params
        model = self._load()
        fps = self.ctx.fps
        W, H = int(rec.probe["width"]), int(rec.probe["height"])
        times = frame_times(rec.start_s, rec.end_s, fps)
        T = len(times)
        mp = p.backend == "mediapipe"
        if face_mesh is None and mp and p.face_from_sync and rec.data.get("face68") is not None:
            face_mesh = np.asarray(rec.data["face68"], np.float32)
        if face_mesh is not None:  # one row per frame of the clip (the sync stage decodes the same frames)
            pad = np.full((T, *face_mesh.shape[1:]), np.nan, np.float32)
            pad[:min(T, len(face_mesh))] = face_mesh[:T]
            face_mesh = pad
            have_mesh = np.isfinite(face_mesh).all(axis=(1, 2))
        cx, cy, cw, ch = person_crop(rec, p.crop_margin, p.crop_top_margin)
        track = rec.data.get("face_track")
        faces = boxes_at(track, times) if track else np.full((T, 4), np.nan)
        kpts = np.zeros((T, 1, 133, 3), np.float32)
        boxes = np.zeros((T, 4), np.float32)
        masked = np.zeros(T, bool)  # boxes[t] is the person mask's
        crop_box = [float(cx), float(cy), float(cx + cw), float(cy + ch)]
        every = {"body": p.pose_every if mp else 1, "face": p.face_every if mp and face_mesh is None else 1}
        ran = {part: np.zeros(T, bool) for part in every}
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
                run = {part: n % k == 0 or n == T - 1 for part, k in every.items()}
                if face_mesh is not None:  # its own face landmarker only where the shared landmarks have no face
                    run["face"] = not have_mesh[n]
                if not mp:
                    kp, box = model.frame(frame, face_w)
                    box = [cx + box[0] * sx, cy + box[1] * sy, cx + box[2] * sx, cy + box[3] * sy]
                else:
                    kp = model.frame(frame, face_w if p.face_crop else None, p.face_crop_scale,
                                     body=run["body"], face=run["face"])
                    mb = getattr(model, "mask_box", None)
                    box = None if mb is None else [cx + mb[0] * sx, cy + mb[1] * sy, cx + mb[2] * sx, cy + mb[3] * sy]
                found = (kp[:, 2] > 0) | (kp[:, 0] != 0) | (kp[:, 1] != 0)
                kp[found, 0] = cx + kp[found, 0] * sx
                kp[found, 1] = cy + kp[found, 1] * sy
                if mp and face_mesh is not None and have_mesh[n]:
                    kp[FACE] = model.face_points(face_mesh[n], model.last_pose)
                kpts[n, 0] = kp
                if box is not None:
                    boxes[n] = box
                    masked[n] = True
                for part in every:
                    ran[part][n] = run[part]
                n += 1
        finally:
            frames.close()
        if n == 0:
            raise RuntimeError("no frame could be decoded for the skeleton")
        if mp:
            for part, idx in (("body", BODY_AND_HANDS), ("face", FACE)):
                if every[part] > 1:
                    sub = kpts[:n, 0, idx]  # a copy for the index array, a view for the slice
                    fill_between(sub, ran[part][:n])
                    kpts[:n, 0, idx] = sub
            for i in range(n):  # the pose model's person mask where it gave one, else the keypoints' box
                if not masked[i]:
                    boxes[i] = self._box(kpts[i, 0], faces[i], W, H) or crop_box
        if n < T:  # the source ended a frame or two early: the writer holds its last frame, so do we
            kpts[n:] = kpts[n - 1]
            boxes[n:] = boxes[n - 1]
        if out_side == "manifest":
            out = self.out_size(rec)
        else:
            out = clip_size(W, H, out_side)
        return scale_to(kpts, boxes, (W, H), out)

    def _box(self, kp: np.ndarray, face, W: int, H: int):
        b = pose_npz.keypoint_box(kp, W, H, self.params.kpt_thr, expand=self.params.bbox_grow)
        if np.all(np.isfinite(face)):
            f = geometry.clip(face, W, H)
            b = f if b is None else geometry.union([b, f])
        return b

    def process_one(self, rec: ClipRecord) -> ClipRecord:
        p: SkeletonParams = self.params
        src = (int(rec.probe["width"]), int(rec.probe["height"]))
        src_kpts, src_boxes = self.estimate(rec, out_side=None)
        rec.data.pop("face68", None)  # the sync stage's face points: used here, not carried further
        out = self.out_size(rec)
        kpts, boxes = scale_to(src_kpts, src_boxes, src, out)
        rec.blobs["pose.npz"] = pose_npz.encode(kpts, boxes)
        summary = pose_npz.summarize(kpts, out[0], out[1], p.kpt_thr)
        self.record(rec, "pose_frames", len(kpts))
        self.label(rec, "pose_backend", p.backend)
        for name, value in summary.items():  # a bound of None records the score only
            self.check(rec, name, value)
        if p.preview:
            from curation.media.pose_preview import render

            rec.blobs["pose.mp4"] = render(rec.source, rec.start_s, src_kpts, src_boxes, src, fps=self.ctx.fps,
                                           max_side=p.preview_max_side, thr=p.kpt_thr, timeout=self.ctx.timeout_s)
        return rec

    def close(self) -> None:
        if self._model is not None:
            self._model.close()
        self._model = None
        self._set_up = False
