"""Single-person stage: real footage, real detectors (YuNet, SCRFD, MediaPipe pose), no Ray."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import clip_record, ffmpeg
from curation.perception.bodies import Body
from curation.engine.config import load_manifest
from curation.media.frames import geometry, iter_samples
from curation.perception.linking import link, main_track
from curation.media.ffmpeg import iter_frames
from curation.engine.record import CANDIDATE, REJECTED
from curation.perception.tracks import boxes_at
from curation.weights import WeightsMissing
from stages.person import PersonParams, PersonStage, decide, face_track_at

# Expected decisions on the shared footage (FOOTAGE.md): None = passes the person stage.
EXPECTED = {
    "A1_hdtf_bob_menendez_talking_8s.mp4": None,
    "A3_retalk_man_suit_talking_6s.mp4": None,
    "E1_liveportrait_d6_single_face_34s.mp4": None,
    "B1_visualvoice_interview_two_people_18s.mp4": "multi_person",
    "D1_noface_cup_hand_quiet_audio_8s.mp4": "no_face",
    "D3_noface_landscape_plane_11s.mp4": "no_face",
}


def _run(stage, footage, names):
    out = {}
    for name in names:
        (rec,) = stage.process([clip_record(footage / name)])
        out[name] = rec
    return out


@pytest.fixture(scope="module")
def yunet_results(footage, weights_dir):
    from stages.base import StageContext

    stage = PersonStage(load_manifest().params("person"), StageContext(weights_dir=str(weights_dir)))
    try:
        yield _run(stage, footage, EXPECTED)
    finally:
        stage.close()


def test_link_follows_a_moving_face_and_splits_two_people():
    # one face drifting right, a second face far away in some frames, one sample with no face
    dets = []
    for i in range(8):
        d = [[100 + 5 * i, 100, 200 + 5 * i, 220, 0.9]]
        if i in (2, 3, 4):
            d.append([500, 80, 580, 180, 0.8])
        dets.append(np.array(d if i != 5 else np.zeros((0, 5)), dtype=float).reshape(-1, 5))
    tracks = link(dets, iou_threshold=0.3, max_gap=2)
    main = main_track(tracks)
    assert len(tracks) == 2
    assert main.frames == [0, 1, 2, 3, 4, 6, 7]  # the gap at 5 is bridged
    assert sorted(len(t.frames) for t in tracks) == [3, 7]


def test_decide_counts_a_body_without_a_face():
    """A second person facing away (a body, no face) makes the clip multi_person; the main person's own
    body (head on the main face) does not."""
    p = PersonParams()
    times = [i / 3 for i in range(9)]
    faces = [np.array([[300, 100, 400, 230, 0.95]]) for _ in times]
    own = Body((250, 80, 460, 720), (350, 160), 20)
    other = Body((700, 150, 950, 700), (820, 200), 14)
    alone = decide(times, faces, [[own] for _ in times], 1280, 720, p)
    assert alone["scores"]["multi_frac"] == 0.0
    assert alone["person_box"] == [250, 80, 460, 720]
    crowd = decide(times, faces, [[own, other] for _ in times], 1280, 720, p)
    assert crowd["scores"]["other_body_frac"] == 1.0 and crowd["scores"]["other_face_frac"] == 0.0
    assert crowd["scores"]["multi_frac"] > p.max_multi_frac
    # a small body far behind (a third of the main one's height) does not count
    far = Body((900, 300, 960, 480), (930, 320), 12)
    assert decide(times, faces, [[own, far] for _ in times], 1280, 720, p)["scores"]["multi_frac"] == 0.0


def test_yunet_decisions_on_shared_footage(yunet_results):
    for name, want in EXPECTED.items():
        rec = yunet_results[name]
        if want is None:
            assert rec.status not in (REJECTED,), f"{name}: {rec.reason} {rec.message}"
            assert rec.scores["face_presence"] >= 0.95 and rec.scores["multi_frac"] == 0.0
        else:
            assert rec.status == REJECTED and rec.stage == "person" and rec.reason == want, (name, rec.reason, rec.message)
        # every score is recorded, kept or rejected
        assert {"face_any_frac", "person_samples", "n_faces_max", "n_bodies_max"} <= set(rec.scores)
    assert yunet_results["B1_visualvoice_interview_two_people_18s.mp4"].scores["other_face_frac"] > 0.9


def test_face_track_contract(yunet_results):
    for name in ("A1_hdtf_bob_menendez_talking_8s.mp4", "E1_liveportrait_d6_single_face_34s.mp4"):
        rec = yunet_results[name]
        tr = rec.data["face_track"]
        t = np.asarray(tr["t"])
        assert len(t) == rec.scores["person_samples"] and np.all(np.diff(t) > 0)
        assert rec.start_s <= t[0] and t[-1] < rec.end_s
        assert 2.5 <= len(t) / rec.duration_s <= 3.5  # sample_fps 3
        w, h = rec.probe["width"], rec.probe["height"]
        boxes = np.array([b for b in tr["boxes"] if b is not None])
        assert len(boxes) == len(t)
        assert np.all(boxes[:, 0] >= -0.05 * w) and np.all(boxes[:, 2] <= 1.05 * w)
        assert np.all(boxes[:, 3] > boxes[:, 1] + 64)
        at25 = face_track_at(rec, 25.0)
        assert at25.shape == (int(round(rec.duration_s * 25)), 4) and np.isfinite(at25).all()
        pb = rec.data["person_box"]
        assert 0 <= pb[0] < pb[2] <= w and 0 <= pb[1] < pb[3] <= h
        # the person box holds the face (within the frame)
        assert pb[0] <= max(0, boxes[:, 0].min()) + 1 and pb[3] >= min(h, boxes[:, 3].max()) - 1


def test_scrfd_gives_the_same_decisions(footage, weights_dir, yunet_results):
    from stages.base import StageContext

    params = load_manifest().params("person").model_copy(update={"face_backend": "scrfd"})
    assert PersonStage.required_weights(params) == ["scrfd_500m", "pose_landmarker"]
    stage = PersonStage(params, StageContext(weights_dir=str(weights_dir)))
    try:
        res = _run(stage, footage, EXPECTED)
    finally:
        stage.close()
    for name in EXPECTED:
        y, s = yunet_results[name], res[name]
        assert (s.status, s.reason) == (y.status, y.reason), (name, s.reason, s.message)
        if y.status != REJECTED:
            # the two detectors put the face in the same place
            a = boxes_at(y.data["face_track"], y.data["face_track"]["t"])
            b = boxes_at(s.data["face_track"], y.data["face_track"]["t"])
            ca, cb = (a[:, :2] + a[:, 2:]) / 2, (b[:, :2] + b[:, 2:]) / 2
            assert np.median(np.linalg.norm(ca - cb, axis=1)) < 0.1 * np.median(a[:, 3] - a[:, 1])


def test_rotated_source_is_decoded_upright(tmp_path, footage, stage_ctx):
    """A phone-style file: the picture is stored turned (transpose) and a display rotation turns it upright.
    Sampled frames match ffmpeg's autorotated decode, the face is found (upright only after rotation: the
    detectors find no face lying on its side) and its box is in display pixels."""
    src = footage / "A1_hdtf_bob_menendez_talking_8s.mp4"
    plain, rotated = tmp_path / "plain.mp4", tmp_path / "rot.mp4"
    ffmpeg("-i", str(src), "-t", "5.5", "-vf", "crop=512:440:0:72,transpose=1", "-c:v", "libx264", "-c:a", "aac", str(plain))
    ffmpeg("-i", str(plain), "-c", "copy", "-metadata:s:v:0", "rotate=90", str(rotated))
    rec = clip_record(rotated, 0.0, 5.5)
    assert rec.probe["rotation"] in (90, 270) and (rec.probe["width"], rec.probe["height"]) == (512, 440)
    geo = geometry(rec.probe, max_side=640)
    t, frame = next(iter_samples(str(rotated), 1.0, 2.0, 1.0, geo, rotation=rec.probe["rotation"]))
    ref = next(iter_frames(str(rotated), t + 1e-3, t + 0.05, src_size=(512, 440)))
    assert frame.shape == ref.shape == (440, 512, 3)
    assert np.abs(frame.astype(int) - ref).mean() < 6
    stage = PersonStage(PersonParams(body_check=False), stage_ctx())
    (out,) = stage.process([rec])
    assert out.status != REJECTED, out.message
    boxes = np.array([b for b in out.data["face_track"]["boxes"] if b is not None])
    cx, cy = (boxes[:, 0] + boxes[:, 2]).mean() / 2, (boxes[:, 1] + boxes[:, 3]).mean() / 2
    assert 0 < cx < 512 and 0 < cy < 440


def test_decord_samples_do_not_depend_on_decode_chunks(tmp_path, footage, monkeypatch):
    """curation.media.frames decodes a clip's samples in chunks and parks decord's reader between them (its
    decoder thread must not run ahead while the caller works): frames and times are the same however the
    span is cut into chunks (here 5 frames a chunk of a one-GOP file, so every later chunk starts mid-GOP)."""
    import curation.media.frames as frames

    one_gop = tmp_path / "one_gop.mp4"
    ffmpeg("-i", str(footage / "A1_hdtf_bob_menendez_talking_8s.mp4"), "-t", "6", "-g", "300", "-c:v", "libx264",
           "-preset", "ultrafast", "-c:a", "aac", str(one_gop))
    rec = clip_record(one_gop)
    geo = geometry(rec.probe, max_side=640)

    def sample():
        return list(iter_samples(rec.source, 0.5, rec.end_s, 3.0, geo))

    whole = sample()
    monkeypatch.setattr(frames, "DECODE_BUDGET_BYTES", 5 * geo.dec_w * geo.dec_h * 3)
    chunked = sample()
    assert len(whole) == len(chunked) > 10
    assert [t for t, _ in whole] == [t for t, _ in chunked]
    assert all(np.array_equal(a, b) for (_, a), (_, b) in zip(whole, chunked))


def test_ffmpeg_decoder_gives_the_same_decision(footage, stage_ctx, yunet_results):
    name = "A3_retalk_man_suit_talking_6s.mp4"
    stage = PersonStage(PersonParams(decoder="ffmpeg", body_check=False), stage_ctx())
    (rec,) = stage.process([clip_record(footage / name)])
    ref = yunet_results[name]
    assert rec.status == ref.status and abs(rec.scores["face_px"] - ref.scores["face_px"]) < 0.1 * ref.scores["face_px"]


def test_missing_weights_fail_at_startup(tmp_path):
    from curation.engine.pipeline import check_weights

    m = load_manifest()
    assert PersonStage.required_weights(m.params("person")) == ["yunet", "pose_landmarker"]
    with pytest.raises(WeightsMissing, match="person"):
        check_weights(m, str(tmp_path))


def test_score_only_keeps_scoring(footage, stage_ctx):
    """In a score-only run a threshold reason is only noted and the face track is still handed on."""
    stage = PersonStage(PersonParams(body_check=False, sample_fps=2.0), stage_ctx(score_only=True))
    (rec,) = stage.process([clip_record(footage / "B1_visualvoice_interview_two_people_18s.mp4", 0.0, 6.0)])
    assert rec.status != REJECTED and "person:multi_person" in rec.would_reject
    assert rec.data["face_track"]["boxes"][0] is not None
    # not rejected and not kept either (only the committer keeps a clip): still a candidate, with the score
    # behind the noted reason above its bound
    assert rec.status == CANDIDATE and rec.reason is None
    assert rec.scores["multi_frac"] > stage.params.max_multi_frac


@pytest.mark.parametrize("backend", ["yunet", "scrfd"])
def test_small_face_in_a_big_frame_is_face_too_small(tmp_path, footage, stage_ctx, backend):
    """A1 shrunk to 80 px inside a 1280x720 frame: both detectors still find the face (about 60 px), and
    it fills too little of the frame height."""
    small = tmp_path / "small.mp4"
    ffmpeg("-i", str(footage / "A1_hdtf_bob_menendez_talking_8s.mp4"), "-t", "6", "-vf", "scale=80:80,pad=1280:720:600:300",
           "-c:v", "libx264", "-preset", "veryfast", "-c:a", "aac", str(small))
    stage = PersonStage(PersonParams(face_backend=backend, body_check=False, sample_fps=2.0), stage_ctx())
    (rec,) = stage.process([clip_record(small)])
    assert rec.reason == "face_too_small", (rec.reason, rec.message)
    assert rec.scores["face_any_frac"] == 1.0 and rec.scores["face_height_frac"] < 0.1
    box = np.nanmedian(boxes_at(rec.data["face_track"], rec.data["face_track"]["t"]), axis=0)
    assert 590 < box[0] < box[2] < 690 and 290 < box[1] < box[3] < 390  # where the face was put
