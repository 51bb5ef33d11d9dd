"""The per-clip skeleton file as TalkVerse-style trainers read it, and the summaries the audit keeps.

`pose.npz` (numpy .npz, read with plain `np.load`) holds exactly two arrays:
    keypoints_info    float32 (T, 1, 133, 3): x, y in pixels of the written clip, score; COCO-WholeBody order
                      (curation.formats.wholebody); T = frames of the clip at 25 fps. A point not found is (0, 0, 0).
    person_bbox_xyxy  float32 (T, 4): the person's box per frame, pixels of the written clip.

`face_boxes` derives face boxes from keypoints 23-90 the way TalkVerse's loader does
(snap-research/TalkVerse wan/src/dataset_resolution_bins_roi.py, `keypoints_to_face_bboxes`): per frame the
min/max of the face points whose score is above `min_conf` (0 there), finite, and not exactly (0, 0); NaN
where no face point qualifies. That loader uses the box as is (no expansion); `expand` is for callers that
want a margin."""

from __future__ import annotations

import io

import numpy as np

from curation import geometry
from curation.formats.wholebody import BODY, FACE, HANDS, LEFT_HAND, NOSE, RIGHT_HAND

KEYS = ("keypoints_info", "person_bbox_xyxy")


def encode(keypoints_info: np.ndarray, person_bbox_xyxy: np.ndarray) -> bytes:
    k = np.asarray(keypoints_info, np.float32)
    b = np.asarray(person_bbox_xyxy, np.float32)
    if k.ndim != 4 or k.shape[1:] != (1, 133, 3):
        raise ValueError(f"keypoints_info must be (T, 1, 133, 3), got {k.shape}")
    if b.shape != (k.shape[0], 4):
        raise ValueError(f"person_bbox_xyxy must be ({k.shape[0]}, 4), got {b.shape}")
    buf = io.BytesIO()
    np.savez_compressed(buf, keypoints_info=k, person_bbox_xyxy=b)
    return buf.getvalue()


def decode(data: bytes) -> dict[str, np.ndarray]:
    with np.load(io.BytesIO(data), allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def face_boxes(kpts: np.ndarray, min_conf: float = 0.0, expand: float = 0.0) -> np.ndarray:
    """(T, 4) face boxes [x0, y0, x1, y1] from a (T, 1, 133, 3) array, NaN rows where no face point counts.
    `expand` grows each box by that share of its width/height on every side."""
    if kpts.ndim != 4 or kpts.shape[1] != 1 or kpts.shape[2] != 133:
        raise ValueError(f"expected (T, 1, 133, 3), got {kpts.shape}")
    face = kpts[:, 0, FACE, :].astype(np.float64)
    xy, conf = face[..., :2], face[..., 2]
    valid = (conf > min_conf) & np.isfinite(xy).all(-1) & ~((xy[..., 0] == 0) & (xy[..., 1] == 0))
    out = np.full((len(kpts), 4), np.nan)
    for t in np.flatnonzero(valid.any(axis=1)):
        p = xy[t, valid[t]]
        out[t] = [p[:, 0].min(), p[:, 1].min(), p[:, 0].max(), p[:, 1].max()]
    if expand:
        w, h = out[:, 2] - out[:, 0], out[:, 3] - out[:, 1]
        out += np.stack([-w, -h, w, h], axis=1) * expand
    return out


def summarize(kpts: np.ndarray, width: int, height: int, thr: float = 0.3) -> dict[str, float]:
    """Audit columns for one clip's (T, 1, 133, 3) keypoints in a width x height frame.

    pose_body_score / pose_face_score / pose_hand_score: mean score over all frames and all points of the
        part (17 body, 68 face, 2 x 21 hands); a point not found counts as 0.
    pose_both_hands_frac: share of frames where both hands are found (mean hand score above `thr`).
    pose_out_of_frame_frac: share of frames where the person is not in the frame: neither at least half of
        the face points (score above `thr`) lie inside the frame, nor the nose (score above `thr`) does."""
    k = kpts[:, 0].astype(np.float64)
    sc = k[..., 2]
    inside = (k[..., 0] >= 0) & (k[..., 0] < width) & (k[..., 1] >= 0) & (k[..., 1] < height)
    face_ok = sc[:, FACE] > thr
    n_face = face_ok.sum(axis=1)
    face_in = (face_ok & inside[:, FACE]).sum(axis=1)
    head_in = (n_face > 0) & (face_in >= 0.5 * 68)
    nose_in = (sc[:, NOSE] > thr) & inside[:, NOSE]
    both = (sc[:, LEFT_HAND].mean(axis=1) > thr) & (sc[:, RIGHT_HAND].mean(axis=1) > thr)
    return {
        "pose_body_score": float(sc[:, BODY].mean()),
        "pose_face_score": float(sc[:, FACE].mean()),
        "pose_hand_score": float(sc[:, HANDS].mean()),
        "pose_both_hands_frac": float(both.mean()),
        "pose_out_of_frame_frac": float(1.0 - (head_in | nose_in).mean()),
    }


def keypoint_box(kp: np.ndarray, width: int, height: int, thr: float = 0.3, expand: float = 0.1):
    """[x0, y0, x1, y1] around one frame's (133, 3) points scored above `thr` that lie in the frame, grown by
    `expand` of its size on every side and clipped to the frame; None when no point qualifies. (Keypoints are
    joints, not the body's outline: the margin brings the box out to roughly where a detector's box lies.)"""
    ok = (kp[:, 2] > thr) & (kp[:, 0] >= 0) & (kp[:, 0] < width) & (kp[:, 1] >= 0) & (kp[:, 1] < height)
    return geometry.points_box(kp[ok, :2], width, height, expand)
