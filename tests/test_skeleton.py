"""Skeleton stage: COCO-WholeBody pose.npz on real footage with the person stage's real face track and person
box, mapping tables against MediaPipe's own definitions, the shard round trip read the TalkVerse way, the
low_pose_conf reason on a clip the person leaves, and the DWPose ONNX path on tiny generated models."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import numpy as np
import pytest
import yaml

from conftest import WEIGHTS, clip_record, ffmpeg
from curation.formats import pose_npz
from curation.formats import wholebody as wb
from curation.engine.record import REJECTED
from curation.perception.tracks import boxes_at, frame_times
from stages.base import StageContext
from stages.skeleton import SkeletonParams, SkeletonStage, fill_between, person_crop

os.environ.setdefault("OMP_NUM_THREADS", "1")

# "Inside" for the face keypoints' box vs the person stage's face box: within the face box grown by 15 % of
# its width / height on each side. The two boxes are defined differently: YuNet's (WIDER FACE style) box is
# tight on the cheeks, while iBUG jaw points 0-2 / 14-16 lie on the face contour at ear level. Whole clips:
# share of frames inside with a 0 / 5 / 10 / 15 % margin: A1 0.00 / 0.46 / 0.95 / 1.00, E1 0.13 / 0.95 /
# 1.00 / 1.00, A3 0.02 / 1.00 / 1.00 / 1.00, A7 0.00 / 0.95 / 1.00 / 1.00 (A1's jaw reaches 12 % of the box
# width past it). The track is also sampled at 3 fps and interpolated to 25 fps. A crop-offset error would
# move the keypoints by the crop offset (20-90 px here, 9-40 % of the face) and is caught at 2-5 % by
# test_coordinates_do_not_depend_on_the_crop.
INSIDE_TOL = 0.15


def ctx(**kw) -> StageContext:
    base = dict(weights_dir=str(WEIGHTS), fps=25.0, video={"crf": 23, "preset": "ultrafast"})
    base.update(kw)
    return StageContext(**base)


@pytest.fixture(scope="module")
def person():
    from stages.person import PersonParams, PersonStage

    st = PersonStage(PersonParams(), ctx())
    yield st
    st.close()


@pytest.fixture(scope="module")
def skeleton():
    st = SkeletonStage(SkeletonParams(), ctx())
    yield st
    st.close()


def person_record(person, path, start, end, params=None):
    rec = clip_record(path, start, end)
    if params is not None:
        from stages.person import PersonStage

        st = PersonStage(params, ctx())
        try:
            (rec,) = st.process([rec])
        finally:
            st.close()
    else:
        (rec,) = person.process([rec])
    assert "face_track" in rec.data and "person_box" in rec.data, (rec.reason, rec.message)
    return rec


def run_skeleton(stage, rec):
    (rec,) = stage.process([rec])
    assert rec.status != REJECTED, (rec.reason, rec.message)
    return rec, pose_npz.decode(rec.blobs["pose.npz"])


def inside(inner: np.ndarray, outer: np.ndarray, tol: float) -> np.ndarray:
    """Per row: box `inner` lies within `outer` grown by `tol` of its width/height on each side."""
    w, h = outer[:, 2] - outer[:, 0], outer[:, 3] - outer[:, 1]
    return ((inner[:, 0] >= outer[:, 0] - tol * w) & (inner[:, 1] >= outer[:, 1] - tol * h)
            & (inner[:, 2] <= outer[:, 2] + tol * w) & (inner[:, 3] <= outer[:, 3] + tol * h))


def point_in(pts: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    return ((pts[:, 0] >= boxes[:, 0]) & (pts[:, 0] <= boxes[:, 2])
            & (pts[:, 1] >= boxes[:, 1]) & (pts[:, 1] <= boxes[:, 3]))


def check_clip(rec, arrays):
    """The issue's acceptance checks on one clip."""
    k, b = arrays["keypoints_info"], arrays["person_bbox_xyxy"]
    T = int(round((rec.end_s - rec.start_s) * 25))
    assert set(arrays) == {"keypoints_info", "person_bbox_xyxy"}
    assert k.shape == (T, 1, 133, 3) and k.dtype == np.float32
    assert b.shape == (T, 4) and np.isfinite(b).all()
    W, H = rec.probe["width"], rec.probe["height"]
    assert (b[:, 0] >= 0).all() and (b[:, 2] <= W).all() and (b[:, 1] >= 0).all() and (b[:, 3] <= H).all()
    track = boxes_at(rec.data["face_track"], frame_times(rec.start_s, rec.end_s, 25))
    faces = pose_npz.face_boxes(k)
    found = np.isfinite(faces).all(axis=1)
    assert found.mean() >= 0.95
    ok = found & inside(faces, track, INSIDE_TOL)
    assert ok.mean() >= 0.95, f"face keypoints inside the face track on {ok.mean():.1%} of frames"
    nose = k[:, 0, wb.NOSE]
    nose_ok = (nose[:, 2] > 0.3) & point_in(nose[:, :2], np.where(found[:, None], faces, -1))
    assert nose_ok.mean() >= 0.95, f"body nose inside the face box on {nose_ok.mean():.1%} of frames"
    # the person box holds the face
    assert (found & inside(faces, b.astype(np.float64), 0.0)).mean() >= 0.95
    return faces, track


# -- mapping tables (no model) -------------------------------------------------------------------------
def test_body_feet_hand_tables_match_mediapipe_names():
    from mediapipe.tasks.python import vision
    from mediapipe.tasks.python.vision.hand_landmarker import HandLandmark

    names = {lm.value: lm.name.lower() for lm in vision.PoseLandmark}
    assert tuple(names[i] for i in range(33)) == wb.POSE33_NAMES
    assert [names[i] for i in wb.POSE33_TO_BODY17] == list(wb.BODY_NAMES)
    feet = {"big_toe": "foot_index", "heel": "heel"}
    for k, src in enumerate(wb.POSE33_TO_FEET6):
        side, part = wb.FEET_NAMES[k].split("_", 1)
        if part == "small_toe":
            assert src is None
        else:
            assert names[src] == f"{side}_{feet[part]}"
    # COCO-WholeBody hand order (wrist, thumb1-4, forefinger1-4, ...) is MediaPipe's HandLandmark order
    mp_hand = [lm.name for lm in sorted(HandLandmark, key=lambda x: x.value)]
    fingers = {"thumb": "THUMB", "forefinger": "INDEX_FINGER", "middle_finger": "MIDDLE_FINGER",
               "ring_finger": "RING_FINGER", "pinky_finger": "PINKY"}
    assert mp_hand[0] == "WRIST" and wb.HAND_NAMES[0] == "wrist"
    for i, name in enumerate(wb.HAND_NAMES[1:], start=1):
        assert mp_hand[i].startswith(fingers[name[:-1]]), (i, name, mp_hand[i])
    # part slices tile the 133 points
    cover = np.zeros(133, int)
    for s in (wb.BODY, wb.FEET, wb.FACE, wb.LEFT_HAND, wb.RIGHT_HAND):
        cover[s] += 1
    assert (cover == 1).all() and wb.FACE == slice(23, 91)


def test_face_table_regions_are_mediapipe_regions():
    from mediapipe.tasks.python import vision

    C = vision.FaceLandmarksConnections

    def pts(conns):
        return {x for c in conns for x in (c.start, c.end)}

    t = wb.FACE478_TO_IBUG68
    assert len(t) == 68 and all(0 <= i < 468 for idx in t for i in idx)
    flat = [idx for idx in t]
    assert len({tuple(x) for x in flat}) == 68
    region = {
        range(0, 17): pts(C.FACE_LANDMARKS_FACE_OVAL),
        range(17, 22): pts(C.FACE_LANDMARKS_RIGHT_EYEBROW),
        range(22, 27): pts(C.FACE_LANDMARKS_LEFT_EYEBROW),
        range(27, 36): pts(C.FACE_LANDMARKS_NOSE),
        range(36, 42): pts(C.FACE_LANDMARKS_RIGHT_EYE),
        range(42, 48): pts(C.FACE_LANDMARKS_LEFT_EYE),
        range(48, 68): pts(C.FACE_LANDMARKS_LIPS),
    }
    for ks, allowed in region.items():
        for k in ks:
            assert set(t[k]) <= allowed, (k, t[k])
    assert t[8] == (152,)  # chin (menton)
    # the mirror permutation is an involution mapping each region onto its counterpart
    m = np.asarray(wb.IBUG68_MIRROR)
    assert (m[m] == np.arange(68)).all()
    assert set(m[36:42]) == set(range(42, 48)) and set(m[17:22]) == set(range(22, 27))
    M = wb.FACE_MATRIX
    assert M.shape == (68, 478) and np.allclose(M.sum(axis=1), 1.0)


def test_pose_npz_encoding_and_talkverse_face_boxes():
    T = 4
    k = np.zeros((T, 1, 133, 3), np.float32)
    k[0, 0, 23:91] = [10, 20, 0.9]
    k[0, 0, 30] = [50, 80, 0.9]
    k[1, 0, 23:91] = [100, 100, 0.0]      # score 0: not a face point
    k[2, 0, 23:91] = [0, 0, 0.8]          # exactly (0, 0): not a face point
    k[2, 0, 40] = [30, 40, 0.8]
    k[3, 0, 23:91] = [5, 5, 0.9]
    k[3, 0, 25] = [np.nan, 5, 0.9]
    b = np.tile(np.array([1, 2, 3, 4], np.float32), (T, 1))
    data = pose_npz.encode(k, b)
    with np.load(io.BytesIO(data)) as z:  # plain numpy, as a trainer reads it
        assert sorted(z.files) == ["keypoints_info", "person_bbox_xyxy"]
        assert z["keypoints_info"].shape == (T, 1, 133, 3) and z["person_bbox_xyxy"].shape == (T, 4)
        np.testing.assert_array_equal(np.nan_to_num(z["keypoints_info"]), np.nan_to_num(k))
    fb = pose_npz.face_boxes(k)
    np.testing.assert_allclose(fb[0], [10, 20, 50, 80])
    assert np.isnan(fb[1]).all()
    np.testing.assert_allclose(fb[2], [30, 40, 30, 40])
    np.testing.assert_allclose(fb[3], [5, 5, 5, 5])
    np.testing.assert_allclose(pose_npz.face_boxes(k[:1], expand=0.5)[0], [-10, -10, 70, 110])
    with pytest.raises(ValueError):
        pose_npz.encode(k[:, 0], b)


def test_summary_columns():
    T, W, H = 10, 100, 100
    k = np.zeros((T, 1, 133, 3), np.float32)
    k[:, 0, wb.BODY] = [50, 50, 0.5]
    k[:, 0, wb.FACE] = [50, 40, 0.9]
    k[:4, 0, wb.FACE, 0] = 150  # face out of the frame on 4 frames ...
    k[:2, 0, wb.NOSE, 2] = 0.0  # ... and the nose unseen on 2 of them
    k[5:, 0, wb.HANDS] = [60, 80, 0.8]
    k[7:, 0, wb.RIGHT_HAND, 2] = 0.0
    s = pose_npz.summarize(k, W, H, thr=0.3)
    assert s["pose_body_score"] == pytest.approx((0.5 * 16 + 0.5 * 0.8) / 17, abs=1e-6)
    assert s["pose_face_score"] == pytest.approx(0.9, abs=1e-6)
    assert s["pose_hand_score"] == pytest.approx(0.8 * (5 + 2) / 2 / 10, abs=1e-6)
    assert s["pose_both_hands_frac"] == pytest.approx(0.2)
    assert s["pose_out_of_frame_frac"] == pytest.approx(0.2)


# -- MediaPipe backend on real frames ------------------------------------------------------------------
@pytest.fixture(scope="module")
def b1_right(tmp_path_factory, footage) -> Path:
    """The right half of B1's split screen (one man talking with both hands in view), 1.6 s."""
    out = tmp_path_factory.mktemp("b1") / "b1_right.mp4"
    ffmpeg("-ss", "4", "-t", "1.6", "-i", str(footage / "B1_visualvoice_interview_two_people_18s.mp4"),
           "-vf", "crop=640:720:640:0", "-c:v", "libx264", "-preset", "ultrafast", "-c:a", "aac", str(out))
    return out


def test_face68_semantics_and_mirror_consistency(skeleton, b1_right, footage):
    from curation.media.ffmpeg import read_frames

    model = skeleton._load()
    a1 = read_frames(str(footage / "A1_hdtf_bob_menendez_talking_8s.mp4"), 2.0, 2.04, src_size=(512, 512))[0]
    b1 = read_frames(str(b1_right), 0.4, 0.44, src_size=(640, 720))[0]
    for img in (a1, b1):
        model.begin_clip()
        kp = model.frame(img)
        model.begin_clip()
        km = model.frame(np.ascontiguousarray(img[:, ::-1]))
        assert model.flushed_left == 0  # the black frame between clips ended every track of the last one
        f = kp[wb.FACE]
        x, y = f[:, 0], f[:, 1]
        assert (f[:, 2] > 0.5).all()
        # iBUG semantics on a frontal face: subject's right (image left) first
        assert x[0] < x[8] < x[16] and y[8] == y[:17].max()
        assert x[36:42].mean() < x[42:48].mean() and x[17:22].mean() < x[22:27].mean()
        assert y[17:27].mean() < y[36:48].mean() < y[30] < y[48:68].mean()
        assert np.all(np.diff(y[27:31]) > 0) and np.all(np.diff(x[31:36]) > 0)
        assert x[48] < x[51] < x[54] and y[51] < y[62] and y[66] < y[57] and y[62] <= y[66] + 1
        assert y[37] < y[41] and y[38] < y[40] and y[43] < y[47] and y[44] < y[46]
        size = y[8] - y[27]
        # the pose's nose / eyes (COCO body 0-2) sit on the face mesh's nose tip / eye centres
        assert np.linalg.norm(kp[0, :2] - f[30, :2]) < 0.15 * size
        assert np.linalg.norm(kp[1, :2] - f[42:48, :2].mean(0)) < 0.15 * size  # left eye: iBUG 42-47
        assert np.linalg.norm(kp[2, :2] - f[36:42, :2].mean(0)) < 0.15 * size
        # mirrored image, mirrored back with the left/right permutation: the same points
        back = wb.mirror_wholebody(km, img.shape[1])
        err = np.linalg.norm(back[wb.FACE, :2] - f[:, :2], axis=1) / size
        assert np.median(err) < 0.03 and err.max() < 0.12
        # (the pose model is less mirror-symmetric: A1's head points move 2-7 % of the face size)
        for j in range(5):
            assert np.linalg.norm(back[j, :2] - kp[j, :2]) < 0.12 * size
    # B1: both hands in view; each keeps its side (handedness) in the mirrored image too
    hands = [(kp[wb.LEFT_HAND, 2] > 0).all(), (kp[wb.RIGHT_HAND, 2] > 0).all()]
    assert all(hands)
    for s in (wb.LEFT_HAND, wb.RIGHT_HAND):
        assert np.linalg.norm(back[s, :2] - kp[s, :2], axis=1).mean() < 0.1 * size


def test_hands_assigned_by_handedness(person, skeleton, b1_right):
    rec = person_record(person, b1_right, 0.0, 1.6)
    rec, arrays = run_skeleton(skeleton, rec)
    k = arrays["keypoints_info"][:, 0]
    both = (k[:, wb.LEFT_HAND, 2] > 0.3).all(1) & (k[:, wb.RIGHT_HAND, 2] > 0.3).all(1)
    assert both.mean() >= 0.8 and rec.scores["pose_both_hands_frac"] == pytest.approx(both.mean())
    lw, rw = k[both, wb.LEFT_WRIST, :2], k[both, wb.RIGHT_WRIST, :2]
    lh, rh = k[both, 91, :2], k[both, 112, :2]
    near = np.linalg.norm(lh - lw, axis=1) < np.linalg.norm(lh - rw, axis=1)
    near &= np.linalg.norm(rh - rw, axis=1) < np.linalg.norm(rh - lw, axis=1)
    assert near.mean() >= 0.9
    assert (lh[:, 0] > rh[:, 0]).mean() >= 0.9  # facing the camera: the left hand is on the image right
    assert rec.scores["pose_hand_score"] > 0.5


@pytest.fixture(scope="module")
def a1_full(person, skeleton, footage):
    rec = person_record(person, footage / "A1_hdtf_bob_menendez_talking_8s.mp4", 0.0, 8.0)
    return run_skeleton(skeleton, rec)


def test_a1_full_clip(a1_full):
    rec, arrays = a1_full
    assert arrays["keypoints_info"].shape[0] == 200
    check_clip(rec, arrays)
    s = rec.scores
    assert s["pose_frames"] == 200 and rec.labels["pose_backend"] == "mediapipe"
    assert s["pose_face_score"] > 0.9 and s["pose_out_of_frame_frac"] == 0.0
    assert s["pose_both_hands_frac"] == 0.0 and s["pose_hand_score"] == 0.0  # HDTF crop: no hands in view
    assert 0.2 < s["pose_body_score"] < 0.8  # head and shoulders seen, hips and legs below the frame


def test_e1_span_30fps_source(person, skeleton, footage):
    # a 30 fps source, a span that starts between frames: T is the writer's frame count
    rec = person_record(person, footage / "E1_liveportrait_d6_single_face_34s.mp4", 12.37, 14.91)
    rec, arrays = run_skeleton(skeleton, rec)
    assert arrays["keypoints_info"].shape[0] == round((14.91 - 12.37) * 25) == 64
    check_clip(rec, arrays)
    assert rec.scores["pose_face_score"] > 0.9


def test_coordinates_do_not_depend_on_the_crop(person, skeleton, footage):
    """Keypoints are in the clip's pixels: a different crop (other offset, other scale) moves nothing."""
    base = person_record(person, footage / "A1_hdtf_bob_menendez_talking_8s.mp4", 5.0, 6.6)
    _, ref = run_skeleton(skeleton, base)
    variants = []
    for box in (None, [90.0, 70.0, 512.0, 512.0]):
        rec = clip_record(base.source, base.start_s, base.end_s)
        rec.data = {k: v for k, v in base.data.items() if k != "person_box"}
        if box is not None:
            rec.data["person_box"] = box
        variants.append(rec)
    tight = SkeletonStage(SkeletonParams(crop_margin=0.0, crop_top_margin=0.0, work_size=384), ctx())
    assert person_crop(variants[1], 0.0)[:2] == (90, 70)
    size = np.nanmedian(np.diff(pose_npz.face_boxes(ref["keypoints_info"])[:, 1::2], axis=1))
    try:
        for rec in variants:
            _, arr = run_skeleton(tight, rec)
            a, b = ref["keypoints_info"][:, 0], arr["keypoints_info"][:, 0]
            # the models see other pixels (offset, scale), so the points move a little; a crop offset left
            # in the output would move them by 21 px (no person box) or 70-90 px, 9-40 % of the face size
            for part, tol in ((slice(0, 5), 0.05), (wb.FACE, 0.02)):
                d = np.median(np.linalg.norm(a[:, part, :2] - b[:, part, :2], axis=2)) / size
                assert d < tol, (rec.data.get("person_box"), part, d)
    finally:
        tight.close()


def test_fill_between_interpolates_found_points_only():
    kp = np.zeros((5, 2, 3), np.float32)
    kp[0] = [[0, 0, 1.0], [10, 10, 0.8]]
    kp[3] = [[30, 60, 0.5], [0, 0, 0.0]]  # point 1 not found on frame 3
    kp[4] = [[40, 80, 0.5], [50, 50, 1.0]]
    ran = np.array([True, False, False, True, True])
    fill_between(kp, ran)
    np.testing.assert_allclose(kp[1, 0], [10, 20, 5 / 6], rtol=1e-6)
    np.testing.assert_allclose(kp[2, 0], [20, 40, 2 / 3], rtol=1e-6)
    np.testing.assert_allclose(kp[1, 1], [10, 10, 0.8])  # found on one side only: the nearer frame's value
    np.testing.assert_allclose(kp[2, 1], [0, 0, 0])


def test_max_side_scales_keypoints_and_boxes(person, skeleton, footage):
    """With video.max_side the pose.npz is in the written clip's pixels: A1 (512 px) written at 256 px."""
    rec = person_record(person, footage / "A1_hdtf_bob_menendez_talking_8s.mp4", 2.0, 3.0)
    src_k, src_b = skeleton.estimate(rec, out_side=None)
    small = SkeletonStage(SkeletonParams(), ctx(video={"crf": 23, "preset": "ultrafast", "max_side": 256}))
    try:
        out, arrays = run_skeleton(small, rec)
    finally:
        small.close()
    k, b = arrays["keypoints_info"], arrays["person_bbox_xyxy"]
    found = src_k[..., 2] > 0
    assert found.sum() > 25 * 68
    np.testing.assert_allclose(k[..., :2][found], src_k[..., :2][found] * 0.5, atol=1e-3)
    assert (k[~found] == 0).all()
    np.testing.assert_allclose(b, src_b * 0.5, atol=1e-3)
    assert (b[:, 2] <= 256).all() and (b[:, 3] <= 256).all()


def test_every_third_frame_interpolated_stays_close(person, skeleton, footage):
    """pose_every / face_every = 3: every frame still has its points, near the every-frame run's."""
    rec = person_record(person, footage / "A1_hdtf_bob_menendez_talking_8s.mp4", 4.0, 5.2)
    ref, _ = skeleton.estimate(rec, out_side=None)
    sparse = SkeletonStage(SkeletonParams(pose_every=3, face_every=3), ctx())
    try:
        got, boxes = sparse.estimate(rec, out_side=None)
        assert sparse._model.hand_runs <= 10  # hands follow the pose's frames (30 frames: 10 of them)
    finally:
        sparse.close()
    # Pixels of the 512-px source. The landmarkers smooth over time in VIDEO mode, and see frames 120 ms
    # apart instead of 40: the body's head points move by a median 5.2 px (p95 10.6 px) on this span, the face
    # by (see below); a broken interpolation (points left at 0, or shifted by a frame) moves them by tens to
    # hundreds of pixels, and loses points.
    stats = {}
    for name, part in (("head", slice(0, 5)), ("face", wb.FACE)):
        a, b = ref[:, 0, part], got[:, 0, part]
        both = (a[..., 2] > 0.3) & (b[..., 2] > 0.3)
        assert both.mean() >= 0.97 * (a[..., 2] > 0.3).mean(), name
        d = np.linalg.norm(a[..., :2] - b[..., :2], axis=-1)[both]
        stats[name] = (float(np.median(d)), float(np.percentile(d, 95)))
    assert stats["head"][0] < 8.0 and stats["head"][1] < 16.0, stats
    assert stats["face"][0] < 4.0 and stats["face"][1] < 10.0, stats
    assert np.isfinite(boxes).all()


def test_face_keypoints_from_the_sync_stage(person, skeleton, footage):
    """face_from_sync: the sync stage's per-frame face landmarks (rec.data["face68"], its own FaceLandmarker
    on its own face crops) become the skeleton's face keypoints, its face landmarker not running, within the
    stated error (bench_skeleton.py: mean <= 2.5 px, p95 <= 10 px at 640 px) of the skeleton's own; without
    them (sync off) it runs its own."""
    from stages.sync import SyncParams, SyncStage

    rec = person_record(person, footage / "A1_hdtf_bob_menendez_talking_8s.mp4", 2.0, 5.0)
    own, _ = skeleton.estimate(rec, out_side=None)
    sync = SyncStage(SyncParams(), ctx())
    try:
        (synced,) = sync.process([rec])
    finally:
        sync.close()
    pts = synced.data["face68"]  # handed on whatever sync decides on this 3-s span
    assert pts.shape == (75, 68, 2) and pts.dtype == np.float32 and np.isfinite(pts).all()
    fresh = clip_record(rec.source, 2.0, 5.0)
    fresh.data = dict(synced.data)
    shared = SkeletonStage(SkeletonParams(face_from_sync=True), ctx())
    try:
        got, arrays = run_skeleton(shared, fresh)
        assert shared._model.face_runs == 0 and "face68" not in got.data
        k = arrays["keypoints_info"]  # A1 is 512 px: written as it is, pixels at 640 are these
        a, b = own[:, 0, wb.FACE], k[:, 0, wb.FACE]
        assert (a[..., 2] > 0.3).all() and (b[..., 2] > 0.3).all()
        d = np.linalg.norm(a[..., :2] - b[..., :2], axis=-1)
        assert d.mean() <= 2.5 and np.percentile(d, 95) <= 10.0, (d.mean(), np.percentile(d, 95))
        # a translation or scale error in the crop -> frame mapping would move every point alike
        assert np.abs(np.median(a[..., :2] - b[..., :2], axis=(0, 1))).max() < 1.5
        bare = clip_record(rec.source, 2.0, 3.0)
        bare.data = {k: v for k, v in rec.data.items() if k != "face68"}
        shared.estimate(bare, out_side=None)
        assert shared._model.face_runs == 25  # no shared landmarks: its own landmarker on every frame
    finally:
        shared.close()


def test_shard_round_trip_read_the_talkverse_way(person, footage, tmp_path):
    import cv2

    from curation.media.ffmpeg import iter_frames, probe
    from curation.engine.output import Committer, OutputDir
    from stages.write import WriteStage

    rec = person_record(person, footage / "A1_hdtf_bob_menendez_talking_8s.mp4", 2.0, 4.0)
    stage = SkeletonStage(SkeletonParams(preview=True), ctx())
    try:
        (rec,) = stage.process([rec])
    finally:
        stage.close()
    (rec,) = WriteStage(WriteStage.Params(), ctx()).process([rec])
    out = OutputDir(tmp_path / "out")
    out.create()
    c = Committer(out, "test", 25.0, 16000, shard_max_samples=8, shard_max_bytes=10**9, commit_every_sources=1)
    c.add(rec)
    c.close()
    (shard,) = sorted((tmp_path / "out" / "shards").glob("shard-*.tar"))
    with tarfile.open(shard) as tar:
        files = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
    key = rec.key
    assert {f"{key}.mp4", f"{key}.pose.npz", f"{key}.pose.mp4"} <= set(files)
    (tmp_path / "clip.mp4").write_bytes(files[f"{key}.mp4"])
    (tmp_path / "pose.mp4").write_bytes(files[f"{key}.pose.mp4"])

    # plain numpy, then the face boxes as TalkVerse's loader derives them
    z = np.load(io.BytesIO(files[f"{key}.pose.npz"]))
    kpts, body = z["keypoints_info"], z["person_bbox_xyxy"]
    clip = probe(str(tmp_path / "clip.mp4"))
    assert kpts.shape == (clip.n_frames, 1, 133, 3) == (50, 1, 133, 3) and body.shape == (50, 4)
    assert probe(str(tmp_path / "pose.mp4")).n_frames == 50
    faces = pose_npz.face_boxes(kpts)
    assert np.isfinite(faces).all()

    # the face boxes sit on the faces YuNet finds in the written clip's own frames
    det = cv2.FaceDetectorYN.create(str(WEIGHTS / "yunet" / "face_detection_yunet_2026may.onnx"), "",
                                    (clip.width, clip.height), 0.6, 0.3, 5)
    yunet = np.full((50, 4), np.nan)
    for i, fr in enumerate(iter_frames(str(tmp_path / "clip.mp4"), src_size=(clip.width, clip.height),
                                       pix_fmt="bgr24")):
        _, f = det.detect(fr)
        if f is not None and len(f):
            x, y, w, h = f[np.argmax(f[:, 14]), :4]
            yunet[i] = [x, y, x + w, y + h]
    ok = np.isfinite(yunet).all(1) & inside(faces, yunet, INSIDE_TOL)
    assert ok.mean() >= 0.95
    centre = (faces[:, :2] + faces[:, 2:]) / 2
    assert point_in(centre, yunet).mean() >= 0.95


@pytest.fixture(scope="module")
def leaving(tmp_path_factory, footage) -> Path:
    """A1 for 1.6 s, then the picture slides to the left out of the frame (black after ~2.1 s), 3 s."""
    out = tmp_path_factory.mktemp("leave") / "a1_leaving.mp4"
    ffmpeg("-ss", "1", "-t", "3", "-i", str(footage / "A1_hdtf_bob_menendez_talking_8s.mp4"),
           "-vf", "pad=1024:512:512:0,crop=512:512:'max(0,512-max(0,t-1.6)*1000)':0",
           "-c:v", "libx264", "-preset", "ultrafast", "-c:a", "aac", str(out))
    return out


def test_person_leaving_the_frame_is_low_pose_conf(leaving):
    from stages.person import PersonParams

    # the person stage is made lenient here (the face is gone for a third of the clip) to reach this stage
    rec = person_record(None, leaving, 0.0, 3.0,
                        params=PersonParams(min_face_frac=0.0, min_face_presence=0.0, max_face_jitter=10.0))
    stage = SkeletonStage(SkeletonParams(max_out_of_frame_frac=0.2, min_face_score=0.1), ctx())
    try:
        (rec,) = stage.process([rec])
    finally:
        stage.close()
    assert rec.status == REJECTED and rec.stage == "skeleton" and rec.reason == "low_pose_conf"
    assert "pose_out_of_frame_frac" in rec.message
    assert 0.25 < rec.scores["pose_out_of_frame_frac"] < 0.6
    assert rec.scores["pose_face_score"] > 0.1  # the other threshold passed and was recorded
    assert "pose.npz" in rec.blobs  # scored and written out before the decision (score-only runs use it)


# -- DWPose backend ------------------------------------------------------------------------------------
def _tiny_models(d: Path) -> None:
    """Random-weight ONNX graphs with the DWPose files' signatures, biased so their outputs are known:
    YOLOX: one person at (320, 320) 160 x 240 in the 640 x 640 input; pose: every keypoint at the centre
    of the box, except nose (top-left bin) and left eye (bottom-right bin), scores 0.7."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)

    def graph(name, in_shape, outs, path):
        nodes = [helper.make_node("ReduceMean", ["input"], ["m"], keepdims=1)]
        inits = []
        outputs = []
        for oname, bias in outs:
            w = (rng.standard_normal(bias.shape) * 1e-5).astype(np.float32)
            inits += [numpy_helper.from_array(w, f"{oname}_w"), numpy_helper.from_array(bias, f"{oname}_b")]
            nodes += [helper.make_node("Reshape", ["m", "flat"], [f"{oname}_m"]),
                      helper.make_node("Mul", [f"{oname}_m", f"{oname}_w"], [f"{oname}_x"]),
                      helper.make_node("Add", [f"{oname}_x", f"{oname}_b"], [oname])]
            outputs.append(helper.make_tensor_value_info(oname, TensorProto.FLOAT, list(bias.shape)))
        inits.append(numpy_helper.from_array(np.array([1, 1, 1], np.int64), "flat"))
        g = helper.make_graph(nodes, name, [helper.make_tensor_value_info("input", TensorProto.FLOAT, in_shape)],
                              outputs, inits)
        m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
        m.ir_version = 8
        onnx.checker.check_model(m)
        path.parent.mkdir(parents=True, exist_ok=True)
        onnx.save(m, str(path))

    det = np.zeros((1, 8400, 85), np.float32)
    a = 80 * 80 + 40 * 40 + 10 * 20 + 10  # stride-32 cell (10, 10): centre (320, 320)
    det[0, a, :6] = [0.0, 0.0, np.log(160 / 32), np.log(240 / 32), 0.95, 0.9]
    graph("yolox", [1, 3, 640, 640], [("output", det)], d / "dwpose" / "yolox_l.onnx")
    sx, sy = np.zeros((1, 133, 576), np.float32), np.zeros((1, 133, 768), np.float32)
    sx[0, :, 288], sy[0, :, 384] = 0.8, 0.7
    sx[0, 0], sy[0, 0] = 0, 0
    sx[0, 0, 0], sy[0, 0, 0] = 0.8, 0.7
    sx[0, 1], sy[0, 1] = 0, 0
    sx[0, 1, 575], sy[0, 1, 767] = 0.8, 0.7
    graph("pose", [1, 3, 384, 288], [("simcc_x", sx), ("simcc_y", sy)], d / "dwpose" / "dw-ll_ucoco_384.onnx")


def test_dwpose_backend_with_tiny_onnx_models(person, footage, tmp_path):
    from curation.media.ffmpeg import output_size

    _tiny_models(tmp_path)
    rec = person_record(person, footage / "A1_hdtf_bob_menendez_talking_8s.mp4", 3.0, 3.8)
    stage = SkeletonStage(SkeletonParams(backend="dwpose"), ctx(weights_dir=str(tmp_path)))
    try:
        rec, arrays = run_skeleton(stage, rec)
    finally:
        stage.close()
    k, box = arrays["keypoints_info"][:, 0], arrays["person_bbox_xyxy"]
    assert k.shape == (20, 133, 3) and rec.labels["pose_backend"] == "dwpose"
    cx, cy, cw, ch = person_crop(rec, SkeletonParams().crop_margin, SkeletonParams().crop_top_margin)
    fw, fh = output_size(cw, ch, min(512, cw), min(512, ch))
    r = 640 / max(fw, fh)  # letterbox ratio of the working frame into 640 x 640
    s = np.array([cw / fw, ch / fh])
    off = np.array([cx, cy], np.float64)
    centre = off + np.array([320, 320]) / r * s
    # box: the YOLOX box mapped back; keypoints: its centre, and the corners of the padded (1.25) box
    # brought to the model's 3:4 aspect: 160 x 240 -> 200 x 300 -> 225 x 300 (input pixels)
    np.testing.assert_allclose(box, np.tile(np.r_[off + np.array([240, 200]) / r * s,
                                                  off + np.array([400, 440]) / r * s], (20, 1)), atol=1.0)
    np.testing.assert_allclose(k[:, 2:, :2], np.broadcast_to(centre, (20, 131, 2)), atol=1.5)
    np.testing.assert_allclose(k[:, 0, :2], np.broadcast_to(centre - np.array([112.5, 150]) / r * s, (20, 2)), atol=1.5)
    np.testing.assert_allclose(k[:, 1, :2], np.broadcast_to(centre + np.array([112.5 - 0.5 * 225 / 288, 150 - 0.5 * 300 / 384]) / r * s, (20, 2)), atol=1.5)
    np.testing.assert_allclose(k[..., 2], 0.7, atol=0.01)


def test_dwpose_without_weights_fails_at_start_up(tmp_path):
    from curation.engine.config import load_manifest
    from curation.engine.pipeline import check_weights
    from curation.weights import WeightsMissing

    raw = yaml.safe_load((Path(__file__).parent.parent / "manifests" / "default.yaml").read_text())
    keep = [s for s in raw["stages"] if s["name"] in ("probe", "scenes", "skeleton", "write")]
    sk = next(s for s in keep if s["name"] == "skeleton")
    sk["params"]["backend"] = "dwpose"
    raw["stages"] = keep
    path = tmp_path / "dwpose.yaml"
    path.write_text(yaml.safe_dump(raw))
    m = load_manifest(str(path))
    assert SkeletonStage.required_weights(m.params("skeleton")) == ["dwpose_yolox_l", "dwpose_ll_ucoco_384"]
    with pytest.raises(WeightsMissing) as e:
        check_weights(m, str(WEIGHTS))
    msg = str(e.value)
    assert "dwpose/yolox_l.onnx" in msg and "huggingface.co/yzd-v/DWPose" in msg and "skeleton" in msg
    # with the files in place (here: the tiny test models) the same check passes for the skeleton's files
    from curation.weights import resolve

    _tiny_models(tmp_path / "w")
    for name in SkeletonStage.required_weights(m.params("skeleton")):
        assert resolve(name, tmp_path / "w", stage="skeleton").is_file()
