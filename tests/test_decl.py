"""Declared decisions: the checks every stage's Params declares, one rejection path, audit/thresholds.json (and
the report reading it), manifest inheritance, the geometry helpers; and the audio shift at another frame rate."""

from __future__ import annotations

import json
import subprocess

import numpy as np
import pandas as pd
import pytest
from conftest import clip_record, ffmpeg

from curation import geometry
from curation.engine import thresholds
from curation.engine.config import ManifestError, load_manifest
from curation.engine.record import CANDIDATE, REJECTED, ClipRecord
from stages import REGISTRY, stage_class


# ---------------------------------------------------------------------------------------------------------
# Declarations and Stage.check


def test_every_stage_declares_checks_on_its_own_params():
    for name in REGISTRY:
        cls = stage_class(name)
        cls.Params.validate_checks()  # every check names a params field
        for c in cls.Params.checks:
            assert c.direction in ("min", "max", "max_abs") and c.reason and c.doc, (name, c)
            assert c.reason not in cls.hard_reasons, (name, c.reason)  # a reason is a threshold or hard, not both
        declared = {c.score for c in cls.Params.checks} | set(cls.records) | set(cls.labels)
        assert len(declared) == len({c.score for c in cls.Params.checks}) + len(cls.records) + len(cls.labels), name


def test_thresholds_table_is_the_manifest():
    m = load_manifest("default")
    t = thresholds.table(m)
    rows = {(r["stage"], r["score"], r["reason"]): r for r in t["thresholds"]}
    person = m.params("person")
    r = rows[("person", "face_px", "face_too_small")]
    assert (r["key"], r["bound"], r["direction"], r["hard"]) == ("min_face_px", person.min_face_px, "min", False)
    r = rows[("sync", "sync_offset", "av_offset")]
    assert (r["key"], r["bound"], r["direction"]) == ("max_abs_offset", 3.0, "max_abs")
    assert rows[("probe", "source_short_side_px", "too_small")]["hard"] is True
    # the landmarks backend's confidence bound, not SyncNet's; skeleton's unset bounds are recorded only
    assert rows[("sync", "sync_conf", "low_sync_conf")]["key"] == "landmarks_min_conf"
    sk = m.params("skeleton")
    assert {k[1] for k in rows if k[0] == "skeleton"} == {
        c.score for c in sk.checks if getattr(sk, c.key) is not None} == {"pose_face_score", "pose_out_of_frame_frac"}
    hard = {(r["stage"], r["reason"]) for r in t["hard_reasons"]}
    assert {("probe", "no_video"), ("scenes", "no_shot"), ("person", "unreadable"), ("write", "error:write"),
            ("sync", "timeout:sync"), ("pipeline", "error:pipeline")} <= hard
    kinds = {r["score"]: r["type"] for r in t["scores"]}
    assert kinds["sync_backend"] == kinds["pose_backend"] == "label" and kinds["person_samples"] == "number"

    tv = {(r["stage"], r["score"]): r for r in thresholds.table(load_manifest("talkverse"))["thresholds"]}
    assert tv[("sync", "sync_conf")]["key"] == "syncnet_min_conf" and tv[("sync", "sync_conf")]["bound"] == 1.6
    assert ("sync", "sync_face_frac") not in tv  # a landmarks-only check


def _ctx(**kw):
    from stages.base import StageContext

    return StageContext(weights_dir="/nonexistent", **kw)


def _clip() -> ClipRecord:
    return ClipRecord.for_source("/x/a.mp4").child(0, 1, 0.0, 3.0)


def test_check_rejects_with_the_declared_reason_and_notes_it_in_score_only():
    from stages.scenes import ScenesStage

    st = ScenesStage(ScenesStage.Params(), _ctx())
    rec = _clip()
    assert not st.check(rec, "shot_duration_s", 3.0)
    assert (rec.status, rec.stage, rec.reason) == (REJECTED, "scenes", "too_short")
    assert rec.message == "shot_duration_s=3, needs >= 5" and rec.scores["shot_duration_s"] == 3.0
    rec = _clip()
    assert st.check(rec, "shot_duration_s", 5.0) and rec.status == CANDIDATE

    so = ScenesStage(ScenesStage.Params(), _ctx(score_only=True))
    rec = _clip()
    assert not so.check(rec, "shot_duration_s", 3.0)
    assert rec.status == CANDIDATE and rec.would_reject == ["scenes:too_short"]
    with pytest.raises(KeyError):
        so.check(rec, "not_a_declared_score", 1.0)
    with pytest.raises(ValueError):  # a reason that is neither a check nor a declared hard reason
        so.reject(rec, "too_short", "bypassing the declared check")


def test_hard_check_applies_in_score_only_and_max_abs_and_null():
    from stages.probe import ProbeStage
    from stages.sync import SyncStage

    rec = ClipRecord.for_source("/x/a.mp4")
    ProbeStage(ProbeStage.Params(), _ctx(score_only=True)).check(rec, "source_short_side_px", 12)
    assert (rec.status, rec.reason) == (REJECTED, "too_small") and not rec.would_reject

    st = SyncStage(SyncStage.Params(), _ctx())
    for off, ok in ((-3, True), (3, True), (4, False), (-4, False)):
        rec = _clip()
        assert st.check(rec, "sync_offset", off) is ok
        assert rec.reason == (None if ok else "av_offset")
    assert rec.message == "sync_offset=-4, needs >= -3 and <= 3"
    rec = _clip()  # not measurable: null, and no decision can pass on it
    assert not st.check(rec, "speech_ratio", None) and rec.scores["speech_ratio"] is None
    assert rec.reason == "no_speech"


def test_probe_too_small_is_a_hard_rejection_in_score_only(tmp_path, weights_dir):
    from stages.base import StageContext
    from stages.probe import ProbeStage

    f = tmp_path / "tiny.mp4"
    ffmpeg("-f", "lavfi", "-i", "testsrc2=size=12x12:rate=25:duration=6", "-f", "lavfi", "-i",
           "sine=frequency=440:duration=6", "-c:v", "libx264", "-pix_fmt", "yuv444p", "-c:a", "aac", "-shortest", str(f))
    st = ProbeStage(load_manifest().params("probe"), StageContext(weights_dir=str(weights_dir), score_only=True))
    (rec,) = st.process([ClipRecord.for_source(str(f))])
    assert (rec.status, rec.stage, rec.reason) == (REJECTED, "probe", "too_small"), rec.message
    assert rec.scores["source_short_side_px"] == 12.0 and rec.clip_index is None and rec.is_source


# ---------------------------------------------------------------------------------------------------------
# Manifest inheritance


def test_talkverse_is_default_plus_its_sync_section():
    d, t = load_manifest("default"), load_manifest("talkverse")
    assert t.name == "talkverse" and [s.name for s in t.stages] == [s.name for s in d.stages]
    for s in d.stages:
        if s.name != "sync":
            assert t.params(s.name) == d.params(s.name) and t.stage(s.name).resources == d.stage(s.name).resources
    sp = t.params("sync")
    assert (sp.backend, sp.syncnet_min_conf, sp.max_abs_offset) == ("syncnet", 1.6, 3)
    assert sp.min_speech_ratio == d.params("sync").min_speech_ratio  # inherited
    res = t.stage("sync").resources
    assert (res.num_gpus, res.timeout_s, res.batch_size) == (0.25, 900.0, d.stage("sync").resources.batch_size)
    import yaml

    resolved = yaml.safe_load(t.text)  # self-contained: what an output directory keeps
    assert "extends" not in resolved and resolved["stages"][4]["params"]["backend"] == "syncnet"


def test_extends_merges_by_stage_and_names_the_file_on_errors(tmp_path):
    (tmp_path / "child.yaml").write_text("extends: default\nname: child\nvideo: {fps: 30}\n"
                                         "stages:\n  - name: person\n    params: {min_face_px: 64}\n")
    m = load_manifest(str(tmp_path / "child.yaml"))
    assert m.video.fps == 30 and m.video.audio_rate == 16000 and m.params("person").min_face_px == 64
    assert m.params("person").max_multi_frac == load_manifest().params("person").max_multi_frac
    (tmp_path / "bad.yaml").write_text("extends: default\nname: b\nstages:\n  - name: person\n    params: {bogus: 1}\n")
    with pytest.raises(ManifestError, match=r"bad\.yaml: stages\[2\]\.params\.bogus: unknown key"):
        load_manifest(str(tmp_path / "bad.yaml"))
    (tmp_path / "new.yaml").write_text("extends: default\nname: n\nstages:\n  - name: lipreader\n")
    with pytest.raises(ManifestError, match=r"new\.yaml: stages\[0\]\.name: stage 'lipreader' is not in default\.yaml"):
        load_manifest(str(tmp_path / "new.yaml"))
    (tmp_path / "a.yaml").write_text("extends: b.yaml\nname: a\n")
    (tmp_path / "b.yaml").write_text("extends: a.yaml\nname: b\n")
    with pytest.raises(ManifestError, match="cycle"):
        load_manifest(str(tmp_path / "a.yaml"))


# ---------------------------------------------------------------------------------------------------------
# Geometry


def test_geometry():
    assert geometry.iou([0, 0, 10, 10], [0, 0, 10, 10]) == 1.0
    assert geometry.iou([0, 0, 10, 10], [5, 0, 15, 10]) == pytest.approx(50 / 150)
    assert geometry.iou([0, 0, 1, 1], [2, 2, 3, 3]) == 0.0 and geometry.iou([0, 0, 0, 0], [0, 0, 0, 0]) == 0.0
    assert geometry.expand([10, 20, 30, 60], 0.5) == (0.0, 0.0, 40.0, 80.0)
    assert geometry.contains([0, 0, 10, 10], (10, 5)) and not geometry.contains([0, 0, 10, 10], (10.1, 5))
    assert geometry.union([[1, 2, 3, 4], [0, 3, 2, 9]]) == [0.0, 2.0, 3.0, 9.0]
    assert geometry.clip([-5, 2, 700, 400], 640, 360) == [0.0, 2, 640, 360]
    pts = np.array([[10.0, 10.0], [30.0, 50.0]])
    assert geometry.points_box(pts, 100, 100, 0.1) == pytest.approx([8.0, 6.0, 32.0, 54.0])
    assert geometry.points_box(pts[:0], 100, 100) is None
    assert geometry.square([100, 100, 140, 180], 1.5) == (60.0, 80.0, 120.0)
    assert geometry.square_crop([100, 100, 140, 180], 1.0, 640, 360) == (80, 100, 80, 80)
    assert geometry.square_crop([0, 0, 40, 80], 2.0, 640, 360) == (0, 0, 160, 160)  # kept inside the frame
    x, y, w, h = geometry.even_crop([101.3, 50.2, 301.7, 250.9], 0.15, 320, 240)
    assert w % 2 == h % 2 == 0 and x >= 0 and y >= 0 and x + w <= 320 and y + h <= 240 and x <= 71 and y <= 20


# ---------------------------------------------------------------------------------------------------------
# The report reads thresholds.json


def test_report_takes_thresholds_and_stages_from_thresholds_json(tmp_path):
    from curation.engine.output import OutputDir
    from curation.report import html

    out = OutputDir(tmp_path / "out")
    out.create()
    m = load_manifest()
    clips = pd.DataFrame([
        {"key": "a_0000", "source": "/x/a.mp4", "clip_index": 0, "start_s": 0.0, "end_s": 6.0, "duration_s": 6.0,
         "status": "rejected", "stage": "person", "reason": "face_too_small", "message": "m", "face_px": 20.0,
         "n_faces_max": 1.0, "sync_backend": None, "mystery": 3.0},
        {"key": "a_0001", "source": "/x/a.mp4", "clip_index": 1, "start_s": 6.0, "end_s": 12.0, "duration_s": 6.0,
         "status": "kept", "stage": None, "reason": None, "message": None, "face_px": 90.0, "n_faces_max": 1.0,
         "sync_backend": "landmarks", "mystery": 4.0},
        {"key": "b", "source": "/x/b.mp4", "clip_index": None, "start_s": None, "end_s": None, "duration_s": None,
         "status": "rejected", "stage": "probe", "reason": "unreadable", "message": "m", "face_px": None,
         "n_faces_max": None, "sync_backend": None, "mystery": None},
    ])
    clips["clip_index"] = clips["clip_index"].astype("Int64")
    clips["shard"] = None
    sources = pd.DataFrame([{"source": "/x/a.mp4", "status": "ok", "stage": None, "reason": None,
                             "probe_duration_s": 12.0},
                            {"source": "/x/b.mp4", "status": "rejected", "stage": "probe", "reason": "unreadable",
                             "probe_duration_s": None}])
    out.commit(0, {}, clips, sources)
    state = html.load(out.root)
    assert state.decisions is None and any("thresholds.json" in n for n in state.notes)
    assert html.thresholds(state, html.numeric_scores(state))[0] == {}  # nothing guessed without the file

    thresholds.write(out, m)
    state = html.load(out.root)
    scores = html.numeric_scores(state)
    assert scores[:2] == ["face_px", "n_faces_max"] and "mystery" in scores and "sync_backend" not in scores
    ths, stage_of = html.thresholds(state, scores)
    assert [t.label for t in ths["face_px"]] == [f"≥ {m.params('person').min_face_px:g} (person.min_face_px)"]
    assert stage_of["face_px"] == stage_of["n_faces_max"] == "person" and "mystery" not in stage_of
    assert html.hard_rejection(state).tolist() == [False, False, True]
    assert thresholds.unexplained(state.clips, state.decisions) == []
    bad = state.clips.assign(reason=["too_blue", None, "unreadable"])
    assert thresholds.unexplained(bad, state.decisions) == [("person", "too_blue")]


# ---------------------------------------------------------------------------------------------------------
# On a real run (slow tier)


def test_every_rejection_reason_of_a_run_is_declared(pipeline_output):
    clips = pd.read_parquet(pipeline_output / "audit" / "clips.parquet")
    tables = json.loads((pipeline_output / "audit" / "thresholds.json").read_text())
    rejected = clips[clips["status"] == "rejected"]
    assert rejected["reason"].nunique() >= 6  # the run rejects for many reasons: probe, scenes, person, sync
    assert thresholds.unexplained(clips, tables) == []
    assert clips["clip_index"].isna().sum() == (clips["stage"].eq("probe") & clips["status"].eq("rejected")).sum()
    for score in (r["score"] for r in tables["scores"] if r["type"] == "number"):
        if score in clips:  # numeric scores are numbers or null, never a string
            assert pd.api.types.is_numeric_dtype(clips[score]), score


A1 = "A1_hdtf_bob_menendez_talking_8s.mp4"


def test_audio_shift_at_30_fps(footage, weights_dir, tmp_path):
    """A1 with its audio delayed by 480 ms, run through the person, sync and write stages at a video rate of
    30 fps: the sync stage measures the offset in frames of 30 fps (14.4) and the writer takes the audio that
    much later, so the written wav lines up with A1's own audio (an offset measured in frames of 25 fps, 12,
    applied as frames of 30 fps would leave 80 ms)."""
    from stages.base import StageContext
    from stages.person import PersonStage
    from stages.sync import SyncStage
    from stages.write import WriteStage

    m = load_manifest()
    delayed = tmp_path / "A1_delay400.mp4"
    ffmpeg("-i", str(footage / A1), "-map", "0:v", "-map", "0:a", "-c:v", "copy", "-af", "adelay=480:all=1",
           "-c:a", "aac", str(delayed))
    ctx = StageContext(weights_dir=str(weights_dir), fps=30.0, video={"crf": 20, "preset": "veryfast"})
    person = PersonStage(m.params("person"), ctx)
    # this test is about counting the shift in frames of the video rate, not about when the evidence allows
    # shifting (landmarks_shift_min_conf, tests/test_sync.py): every confident-enough offset is shifted here
    # and the whole offset (shift_margin_frames 0; the margin is tested in tests/test_sync.py)
    sync = SyncStage(m.params("sync").model_copy(update={"max_abs_offset": 15, "landmarks_shift_min_conf": 0.0,
                                                         "shift_margin_frames": 0}), ctx)
    (rec,) = person.process([clip_record(delayed, 1.0, 7.0)])
    (rec,) = sync.process([rec])
    person.close()
    sync.close()
    assert rec.alive, (rec.reason, rec.message)
    assert abs(rec.scores["sync_offset"] - 14.4) <= 1  # 0.48 s = 14.4 frames at 30 fps (12 at 25)
    shift = rec.data["audio_shift_frames"]
    assert shift == rec.scores["sync_offset"] and rec.scores["sync_shift_frames"] == shift
    (rec,) = WriteStage(m.params("write"), ctx).process([rec])
    assert rec.alive, (rec.reason, rec.message)
    wav = tmp_path / "out.wav"
    wav.write_bytes(rec.blobs["wav"])
    written = _pcm(wav)
    own = _pcm(footage / A1, 1.0, 6.0)
    lag = _lag_s(own, written[: len(own)])
    assert abs(lag) <= 1 / 30, (lag, shift)  # in sync within a frame of 30 fps


def _pcm(path, start: float = 0.0, dur: float | None = None) -> np.ndarray:
    cmd = ["ffmpeg", "-nostdin", "-v", "error", "-ss", str(start), "-i", str(path)]
    cmd += ["-t", str(dur)] if dur else []
    cmd += ["-vn", "-ac", "1", "-ar", "16000", "-f", "s16le", "-"]
    return np.frombuffer(subprocess.run(cmd, capture_output=True, check=True).stdout, np.int16).astype(np.float64)


def _lag_s(a: np.ndarray, b: np.ndarray, rate: int = 16000, max_s: float = 0.6) -> float:
    """Seconds by which `b` lags `a`, from the cross-correlation of their 10 ms energy envelopes."""
    hop = rate // 100
    n = min(len(a), len(b)) // hop
    ea = np.log1p((a[: n * hop].reshape(n, hop) ** 2).mean(1))
    eb = np.log1p((b[: n * hop].reshape(n, hop) ** 2).mean(1))
    ea, eb = ea - ea.mean(), eb - eb.mean()
    k = int(max_s * 100)
    lags = list(range(-k, k + 1))
    cc = [np.dot(ea[max(0, -L): n - max(0, L)], eb[max(0, L): n - max(0, -L)]) for L in lags]
    return lags[int(np.argmax(cc))] / 100
