"""COCO-WholeBody keypoints from MediaPipe: PoseLandmarker (33 points), HandLandmarker (2 x 21) and
FaceLandmarker (478) in VIDEO running mode, so each one tracks from frame to frame, converted with the
tables of curation.formats.wholebody. Built once per stage instance; `begin_clip()` between clips.

Scores. MediaPipe's outputs differ from DWPose's per-point confidences:
  body, feet  the pose landmark's `visibility` (probability that the point is in the image and unoccluded)
  face        the mesh carries no per-point confidence, and the landmarker returns a face only while its
              presence score clears `min_presence`. Every face point gets the mean visibility of the pose's
              head landmarks (nose, eyes, ears, mouth corners) on that frame, floored at `min_presence`
              (`min_presence` alone when the pose is not found). Occluded or turned-away heads score lower.
  hands       the hand's handedness confidence, on all 21 points (the landmarker returns a hand only while
              its presence score clears `min_presence`).
  not found   (0, 0, 0), which TalkVerse's loader skips.

Handedness: with these models, HandLandmarker's "Left"/"Right" is the subject's own side in unmirrored
footage (checked against the pose's wrists on B1; tests/test_skeleton.py keeps checking it), which is
COCO-WholeBody's convention. Two hands with the same label: the more confident keeps it; the other takes the
free side if its wrist is nearer that side's pose wrist, else it is dropped.

Hand cost: the palm detector runs on every frame where no hand is tracked, which in talking-head footage
(hands below the frame) is most of the hand cost. Two savings, both off with hand_gate=False and
hand_search_every=1:
  - gate: when the pose is found and all of its hand landmarks (wrists, pinkies, index fingers, thumbs) lie
    outside the image by more than `gate_margin` of its size, no hand can be in the frame: the hand
    landmarker is skipped on that frame.
  - search interval: while no hand is tracked, the hand landmarker (palm search) runs on every
    `hand_search_every`-th frame only; once a hand is found it runs on every frame and tracks. A hand that
    comes into view is picked up at most `hand_search_every` - 1 frames late.

Between clips the landmarkers would keep tracking the previous clip's person; `begin_clip` makes the next
call first feed one black frame, on which every landmarker loses its track, so each clip starts from
detection (checked in the tests)."""

from __future__ import annotations

import atexit
import time

import numpy as np

from curation import geometry
from curation.formats.wholebody import (FACE, FACE_MATRIX, LEFT_HAND, N_KPTS, POSE33_HANDS, POSE33_HEAD, RIGHT_HAND,
                                body_feet_from_pose33, face68_from_mesh)


def crop_square(rgb: np.ndarray, x0: float, y0: float, side: float, out: int) -> np.ndarray:
    """The square (x0, y0, side) of `rgb` resampled to out x out (black outside the image)."""
    import cv2

    s = out / side
    m = np.array([[s, 0, -x0 * s], [0, s, -y0 * s]], np.float64)
    return cv2.warpAffine(rgb, m, (out, out), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)


class MediaPipeWholebody:
    def __init__(self, pose_task: str, hand_task: str, face_task: str, *, min_detection: float = 0.5,
                 min_presence: float = 0.5, min_tracking: float = 0.5, hand_gate: bool = True,
                 gate_margin: float = 0.05, hand_search_every: int = 1, face_crop_size: int = 256,
                 frame_ms: int = 40, segmentation: bool = False, mask_thr: float = 0.5):
        from mediapipe.tasks.python import BaseOptions, vision

        video = vision.RunningMode.VIDEO
        self._pose = vision.PoseLandmarker.create_from_options(vision.PoseLandmarkerOptions(
            base_options=BaseOptions(model_asset_path=str(pose_task)), running_mode=video, num_poses=1,
            min_pose_detection_confidence=min_detection, min_pose_presence_confidence=min_presence,
            min_tracking_confidence=min_tracking, output_segmentation_masks=bool(segmentation)))
        # The pose model's person segmentation: `mask_box` is the box of the pixels above `mask_thr` on the last
        # frame (head, hair and shoulders included, which keypoints, being joints, are not), or None.
        self.segmentation = bool(segmentation)
        self.mask_thr = float(mask_thr)
        self.mask_box: list[float] | None = None
        self._hand = vision.HandLandmarker.create_from_options(vision.HandLandmarkerOptions(
            base_options=BaseOptions(model_asset_path=str(hand_task)), running_mode=video, num_hands=2,
            min_hand_detection_confidence=min_detection, min_hand_presence_confidence=min_presence,
            min_tracking_confidence=min_tracking))
        self._face = vision.FaceLandmarker.create_from_options(vision.FaceLandmarkerOptions(
            base_options=BaseOptions(model_asset_path=str(face_task)), running_mode=video, num_faces=1,
            min_face_detection_confidence=min_detection, min_face_presence_confidence=min_presence,
            min_tracking_confidence=min_tracking))
        self.min_presence = float(min_presence)
        self.hand_gate = hand_gate
        self.gate_margin = gate_margin
        self.hand_search_every = max(1, int(hand_search_every))
        self._hand_tracking = False
        self._hand_idle = 0
        self._last_pose = None
        self.face_crop_size = int(face_crop_size)
        self.frame_ms = int(frame_ms)
        self._ts = 0
        self._reset_pending = False
        self.flushed_left = 0  # detections still returned on the last black reset frame (expected 0)
        self.hand_runs = 0  # frames the hand landmarker ran on (for the audit of the gate)
        self.face_runs = 0  # frames the face landmarker ran on (since begin_clip)
        self.cpu = {"pose": 0.0, "hands": 0.0, "face": 0.0}  # process CPU seconds per part (bench_skeleton.py)
        # MediaPipe's own __del__ fails once its C library is unloaded at interpreter exit: close first.
        atexit.register(self.close)

    # -- clip boundaries -------------------------------------------------------------------------
    def begin_clip(self) -> None:
        self._reset_pending = True
        self.hand_runs = 0
        self.face_runs = 0
        self._hand_tracking = False
        self._hand_idle = 0

    def _tick(self, gap_ms: int = 0) -> int:
        self._ts += self.frame_ms + gap_ms
        return self._ts

    def _image(self, rgb: np.ndarray):
        import mediapipe as mp

        return mp.Image(image_format=mp.ImageFormat.SRGB, data=np.ascontiguousarray(rgb))

    def _flush_tracks(self, shape: tuple[int, ...]) -> int:
        """Feed one black frame to every landmarker; returns what they still found on it (0: tracks lost)."""
        ts = self._tick(gap_ms=1000)
        black = self._image(np.zeros(shape, np.uint8))
        crop = self._image(np.zeros((self.face_crop_size, self.face_crop_size, 3), np.uint8))
        return (len(self._pose.detect_for_video(black, ts).pose_landmarks)
                + len(self._hand.detect_for_video(black, ts).hand_landmarks)
                + len(self._face.detect_for_video(crop, ts).face_landmarks))

    # -- one frame -------------------------------------------------------------------------------
    def frame(self, rgb: np.ndarray, face_box=None, face_scale: float = 1.6, *, body: bool = True,
              face: bool = True) -> np.ndarray:
        """(133, 3) [x, y, score] in pixels of `rgb` (HxWx3 uint8 RGB). `face_box` [x0, y0, x1, y1] in
        the same pixels: the FaceLandmarker then runs on a square crop `face_scale` times its size.
        `body=False` skips the pose and hand landmarkers on this frame, `face=False` the face landmarker
        (their points stay (0, 0, 0): the caller fills them from the frames around, or from landmarks it
        already has, see `face_points`)."""
        if self._reset_pending:
            self.flushed_left = self._flush_tracks(rgb.shape)
            self._reset_pending = False
            self._last_pose = None
        h, w = rgb.shape[:2]
        ts = self._tick()
        img = self._image(rgb)
        out = np.zeros((N_KPTS, 3), np.float32)

        c0 = time.process_time()
        if body:
            self._last_pose = None
            self.mask_box = None  # held on the frames between pose frames (the person moves little in 2 frames)
            res = self._pose.detect_for_video(img, ts)
            if self.segmentation and res.pose_landmarks and res.segmentation_masks:
                m = res.segmentation_masks[0].numpy_view()
                m = m[..., 0] if m.ndim == 3 else m
                rows, cols = np.flatnonzero((m > self.mask_thr).any(1)), np.flatnonzero((m > self.mask_thr).any(0))
                if len(rows) and len(cols):
                    sy, sx = h / m.shape[0], w / m.shape[1]
                    self.mask_box = [float(cols[0] * sx), float(rows[0] * sy), float((cols[-1] + 1) * sx),
                                     float((rows[-1] + 1) * sy)]
            if res.pose_landmarks:
                pose = np.array([[p.x, p.y, p.visibility if p.visibility is not None else 0.0]
                                 for p in res.pose_landmarks[0]], np.float32)
                self._last_pose = pose
                px = pose.copy()
                px[:, 0] *= w
                px[:, 1] *= h
                out[:23] = body_feet_from_pose33(px)
        pose = self._last_pose
        c1 = time.process_time()
        self.cpu["pose"] += c1 - c0

        run = body and self._hands_possible(pose)
        if run and not self._hand_tracking:
            run = self._hand_idle % self.hand_search_every == 0
            self._hand_idle += 1
        if run:
            self.hand_runs += 1
            res = self._hand.detect_for_video(img, ts)
            self._hand_tracking = len(res.hand_landmarks) > 0
            if self._hand_tracking:
                self._hand_idle = 0
            self._put_hands(out, res, pose, w, h)
        c2 = time.process_time()
        self.cpu["hands"] += c2 - c1

        if face:
            self.face_runs += 1
            have_box = face_box is not None and np.all(np.isfinite(face_box))
            if have_box:
                x0, y0, side = geometry.square(face_box, face_scale)
                fimg = self._image(crop_square(rgb, x0, y0, side, self.face_crop_size))
            else:
                x0, y0, side, fimg = 0.0, 0.0, None, img
            res = self._face.detect_for_video(fimg, ts)
            if res.face_landmarks:
                mesh = np.array([[p.x, p.y] for p in res.face_landmarks[0]], np.float32)
                if have_box:
                    mesh = mesh * side + np.array([x0, y0], np.float32)
                else:
                    mesh = mesh * np.array([w, h], np.float32)
                out[FACE] = self.face_points(mesh, pose)
        self.cpu["face"] += time.process_time() - c2
        return out

    def face_points(self, mesh: np.ndarray, pose=None) -> np.ndarray:
        """(68, 3) face keypoints from a (478, 2) FaceLandmarker mesh (or its (68, 2) iBUG points) in pixels, wherever it came from (this
        class's own landmarker, or per-frame landmarks another stage already computed). `pose` (33, 3) with
        visibilities in column 2 gives the score (see the module docstring)."""
        out = np.zeros((68, 3), np.float32)
        mesh = np.asarray(mesh, np.float32)
        out[:, :2] = mesh if len(mesh) == 68 else face68_from_mesh(mesh)  # 68: iBUG points already
        score = self.min_presence
        if pose is not None:
            score = max(score, float(pose[list(POSE33_HEAD), 2].mean()))
        out[:, 2] = score
        return out

    @property
    def last_pose(self):
        """The 33 pose landmarks (normalised x, y, visibility) of the last frame the pose ran on, or None."""
        return self._last_pose

    def _hands_possible(self, pose) -> bool:
        if not self.hand_gate or pose is None:
            return True
        m = self.gate_margin
        p = pose[list(POSE33_HANDS), :2]
        outside = (p[:, 0] < -m) | (p[:, 0] > 1 + m) | (p[:, 1] < -m) | (p[:, 1] > 1 + m)
        return not bool(outside.all())

    def _put_hands(self, out: np.ndarray, res, pose, w: int, h: int) -> None:
        hands = []
        for lms, cats in zip(res.hand_landmarks, res.handedness):
            xy = np.array([[p.x * w, p.y * h] for p in lms], np.float32)
            hands.append((cats[0].category_name.lower(), float(cats[0].score), xy))
        hands.sort(key=lambda t: -t[1])
        slots = {"left": LEFT_HAND, "right": RIGHT_HAND}
        taken: set[str] = set()
        for label, score, xy in hands:
            side = label if label in slots else None
            if side is None or side in taken:
                free = [s for s in slots if s not in taken]
                if not free or pose is None:
                    continue
                # the free side takes this hand only if its wrist lies nearer that side's pose wrist
                wr = {"left": pose[15, :2] * (w, h), "right": pose[16, :2] * (w, h)}
                near = min(wr, key=lambda s: float(np.linalg.norm(xy[0] - wr[s])))
                if near != free[0]:
                    continue
                side = free[0]
            taken.add(side)
            out[slots[side], :2] = xy
            out[slots[side], 2] = score

    def close(self) -> None:
        for name in ("_pose", "_hand", "_face"):
            lm = getattr(self, name, None)
            if lm is not None:
                try:
                    lm.close()
                except Exception:
                    pass
                setattr(self, name, None)


# -- face keypoints shared by the sync stage (issue 16 item 1) -------------------------------------------------
# The sync stage's landmarks backend already runs a FaceLandmarker on every frame of the clip (at the video
# rate, on its face crops). FaceMeshTracker is that tracker (lipsignal.MouthTracker, unchanged) recording, on
# each of its calls, the 68 iBUG points the skeleton makes from the mesh (wholebody.FACE478_TO_IBUG68) in the
# crop's pixels; `crop_points_to_frame` maps them to the frame's pixels the way face_crops cut the crops. The
# sync stage hands them on as rec.data["face68"] (T, 68, 2) float32, NaN where no face, and the skeleton stage
# makes its face keypoints from them instead of running its own face landmarker (`face_from_sync`).
_MESH68_COLS = np.flatnonzero(np.any(FACE_MATRIX != 0, axis=0))  # the mesh points the 68 iBUG points average


def _mesh68(face_landmarks, width: int, height: int) -> np.ndarray:
    """(68, 2) iBUG points in pixels of a width x height image from one FaceLandmarker result's landmarks."""
    xy = np.array([[face_landmarks[i].x * width, face_landmarks[i].y * height] for i in _MESH68_COLS], np.float32)
    return FACE_MATRIX[:, _MESH68_COLS] @ xy


class _Recording:
    """A FaceLandmarker whose detect_for_video also keeps each call's 68 iBUG points (NaN: no face)."""

    def __init__(self, landmarker):
        self._lm = landmarker
        self.face68: list[np.ndarray] = []

    def detect_for_video(self, image, ts):
        res = self._lm.detect_for_video(image, ts)
        if res.face_landmarks:
            self.face68.append(_mesh68(res.face_landmarks[0], image.width, image.height))
        else:
            self.face68.append(np.full((68, 2), np.nan, np.float32))
        return res

    def __getattr__(self, name):
        return getattr(self._lm, name)


def face_mesh_tracker(model_path: str, **kw):
    """The sync stage's lipsignal.MouthTracker whose `landmarks(...)` result also holds "face68": (N, 68, 2)
    float32 iBUG points in the crops' pixels, NaN where no face (one row per frame, as "points")."""
    from curation.perception.lipsignal import MouthTracker

    class FaceMeshTracker(MouthTracker):
        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            self._lm = _Recording(self._lm)

        def landmarks(self, frames, *a, **k):
            self._lm.face68 = []
            out = super().landmarks(frames, *a, **k)
            rows = self._lm.face68
            if len(rows) == len(out["found"]):  # one landmarker call per frame: rows line up with "points"
                out["face68"] = np.stack(rows) if rows else np.zeros((0, 68, 2), np.float32)
            return out

    return FaceMeshTracker(model_path, **kw)


def crop_points_to_frame(points: np.ndarray, rects: np.ndarray, region, decoded_size, crop_px: int) -> np.ndarray:
    """(N, K, 2) points in the pixels of lipsignal.face_crops' square `crop_px` crops -> the frame's pixels.
    The crops were cut from `region` (x, y, w, h of the frame) decoded at `decoded_size` (w, h), at
    `rects[k]` = [x, y, side, side] rounded to decoded pixels, then resized to crop_px: this undoes exactly
    that (the same rounding), so the points land where the frame's own landmarker would put them."""
    x0, y0, rw, rh = region
    dw, dh = decoded_size
    sx, sy = dw / rw, dh / rh
    out = np.full(points.shape, np.nan, np.float32)
    for k in range(min(len(points), len(rects))):
        x, y, side, _ = rects[k]
        a0, b0 = int(round((x - x0) * sx)), int(round((y - y0) * sy))
        a1, b1 = a0 + max(2, int(round(side * sx))), b0 + max(2, int(round(side * sy)))
        a0, b0 = max(0, a0), max(0, b0)
        a1, b1 = min(a1, dw), min(b1, dh)
        # crop pixel u (of crop_px) covers decoded pixels a0 + u * (a1 - a0) / crop_px: continuous coordinates
        out[k, :, 0] = x0 + (a0 + points[k, :, 0] * (a1 - a0) / crop_px) / sx
        out[k, :, 1] = y0 + (b0 + points[k, :, 1] * (b1 - b0) / crop_px) / sy
    return out
