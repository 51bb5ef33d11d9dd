"""Sync stage on real footage, with face tracks from the real person stage and negatives made here with ffmpeg.

- landmarks backend (default manifest): A1 and a 10 s piece of E1 in sync; A1 with its audio delayed by
  400 ms / advanced by 600 ms / replaced by F3's speech (muxed, and as external audio) rejected; D9 no_speech.
- syncnet backend (talkverse manifest): the batched path equals syncnet-python's own SyncNetInstance.evaluate
  on the same crops with a randomly initialised network saved in the syncnet_v2.model format; the crops are
  syncnet-python's `_crop` geometry; the stage runs end to end and checks the weights' sha256."""

from __future__ import annotations

import copy
import shutil
import types

import numpy as np
import pytest
from conftest import clip_record, ffmpeg

A1 = "A1_hdtf_bob_menendez_talking_8s.mp4"
E1 = "E1_liveportrait_d6_single_face_34s.mp4"
D9 = "D9_silent_audio_track_face_5s.mp4"
F3 = "F3_hdtf_rd_radio31_8s.wav"


pytestmark = pytest.mark.usefixtures("torch_one_thread")


@pytest.fixture(scope="module")
def person_stage(weights_dir):
    from curation.engine.config import load_manifest
    from stages.base import StageContext
    from stages.person import PersonStage

    st = PersonStage(load_manifest().params("person"), StageContext(weights_dir=str(weights_dir)))
    yield st
    st.close()


def _tracked(person_stage, path, start=0.0, end=None, audio_path=None):
    """A candidate clip record after the real person stage (which must keep it and hand a face track)."""
    (rec,) = person_stage.process([clip_record(path, start, end, audio_path=audio_path)])
    assert rec.alive, (rec.reason, rec.message)
    assert rec.data["face_track"]["boxes"]
    return rec


@pytest.fixture(scope="module")
def a1_tracked(person_stage, footage):
    return _tracked(person_stage, footage / A1)


def _same_video(a1_rec, path, audio_path=None):
    """A record for a file that has A1's video stream unchanged (stream copy) with other audio: the person
    stage's track of A1 is the track of this video."""
    rec = clip_record(path, a1_rec.start_s, a1_rec.end_s, audio_path=audio_path)
    rec.data["face_track"] = copy.deepcopy(a1_rec.data["face_track"])
    rec.data["person_box"] = list(a1_rec.data["person_box"])
    return rec


@pytest.fixture(scope="module")
def negatives(tmp_path_factory, footage):
    d = tmp_path_factory.mktemp("sync_neg")
    src = str(footage / A1)
    ffmpeg("-i", src, "-map", "0:v", "-map", "0:a", "-c:v", "copy", "-af", "adelay=400:all=1", "-c:a", "aac",
           str(d / "A1_delay400.mp4"))
    ffmpeg("-i", src, "-map", "0:v", "-map", "0:a", "-c:v", "copy", "-af", "atrim=start=0.6,asetpts=PTS-STARTPTS",
           "-c:a", "aac", str(d / "A1_adv600.mp4"))
    ffmpeg("-i", src, "-i", str(footage / F3), "-map", "0:v", "-map", "1:a", "-c:v", "copy", "-c:a", "aac",
           "-shortest", str(d / "A1_F3.mp4"))
    ffmpeg("-i", src, "-vn", "-ac", "1", "-ar", "16000", "-c:a", "pcm_s16le", str(d / "A1_own_audio.wav"))
    return d


@pytest.fixture(scope="module")
def landmarks_stage(weights_dir):
    from curation.engine.config import load_manifest
    from stages.base import StageContext
    from stages.sync import SyncStage

    p = load_manifest().params("sync")
    assert p.backend == "landmarks"
    st = SyncStage(p, StageContext(weights_dir=str(weights_dir)))
    yield st
    st.close()


@pytest.fixture(scope="module")
def a1_synced(landmarks_stage, a1_tracked):
    (rec,) = landmarks_stage.process([copy.deepcopy(a1_tracked)])
    return rec


def _audit_ok(rec, backend):
    for k in ("speech_ratio", "sync_conf", "sync_offset", "sync_shift_frames"):
        assert k in rec.scores, k
    assert rec.labels["sync_backend"] == backend  # a string: kept apart from the numeric scores


# ---------------------------------------------------------------------------------------------------------
# landmarks backend

def test_a1_in_sync(a1_synced):
    rec = a1_synced
    assert rec.alive, (rec.reason, rec.message)
    _audit_ok(rec, "landmarks")
    off = rec.scores["sync_offset"]
    assert abs(off) <= 1
    assert rec.scores["speech_ratio"] > 0.5
    assert rec.scores["sync_face_frac"] > 0.95
    # an offset within the shift margin (1 frame) is never shifted: the writer leaves the audio as it is
    assert rec.scores["sync_shift_frames"] == 0 and "audio_shift_frames" not in rec.data


def test_e1_piece_in_sync(landmarks_stage, person_stage, footage):
    rec = _tracked(person_stage, footage / E1, 0.0, 10.0)
    (rec,) = landmarks_stage.process([rec])
    assert rec.alive, (rec.reason, rec.message)
    _audit_ok(rec, "landmarks")
    assert abs(rec.scores["sync_offset"]) <= 1
    # kept on its confidence: the cca estimator's, or the envelope estimator agreeing with it (E1 is speech over
    # music; the cca confidence of its first 10 s is under landmarks_min_conf, the envelope's is not)
    p = landmarks_stage.params
    assert rec.scores["sync_conf"] >= p.landmarks_min_conf or (
        rec.scores["sync_conf_envelope"] >= p.landmarks_envelope_min_conf
        and abs(rec.scores["sync_offset_envelope"] - rec.scores["sync_offset"]) <= p.landmarks_vote_frames)


def test_a1_audio_delayed_400ms(landmarks_stage, a1_synced, a1_tracked, negatives):
    (rec,) = landmarks_stage.process([_same_video(a1_tracked, negatives / "A1_delay400.mp4")])
    assert not rec.alive and rec.stage == "sync" and rec.reason == "av_offset", (rec.reason, rec.message)
    assert abs(rec.scores["sync_offset"] - a1_synced.scores["sync_offset"] - 10) <= 1
    assert "audio_shift_frames" not in rec.data and rec.scores["sync_shift_frames"] == 0


def test_a1_audio_advanced_600ms(landmarks_stage, a1_synced, a1_tracked, negatives):
    (rec,) = landmarks_stage.process([_same_video(a1_tracked, negatives / "A1_adv600.mp4")])
    assert not rec.alive and rec.stage == "sync", (rec.reason, rec.message)
    assert rec.reason in ("av_offset", "low_sync_conf", "not_speaker")
    d = rec.scores["sync_offset"] - a1_synced.scores["sync_offset"]
    assert d <= -13 or rec.scores["sync_offset"] == -landmarks_stage.params.vshift, d


def test_a1_video_with_f3_audio(landmarks_stage, a1_tracked, negatives, footage):
    (muxed,) = landmarks_stage.process([_same_video(a1_tracked, negatives / "A1_F3.mp4")])
    (ext,) = landmarks_stage.process([_same_video(a1_tracked, footage / A1, audio_path=str(footage / F3))])
    for rec in (muxed, ext):
        assert not rec.alive and rec.stage == "sync", (rec.reason, rec.message)
        assert rec.reason in ("not_speaker", "low_sync_conf", "av_offset")
        assert rec.scores["speech_ratio"] > 0.5  # it is speech, just not this speaker's
    # the external audio path is read, not the file's own track: same numbers as F3 muxed in
    assert ext.scores["sync_offset"] == muxed.scores["sync_offset"]
    assert ext.scores["sync_conf"] == pytest.approx(muxed.scores["sync_conf"], rel=0.1)  # AAC vs. the wav


def test_external_own_audio_matches(landmarks_stage, a1_synced, a1_tracked, negatives, footage):
    (rec,) = landmarks_stage.process([_same_video(a1_tracked, footage / A1, audio_path=str(negatives / "A1_own_audio.wav"))])
    assert rec.alive, (rec.reason, rec.message)
    assert rec.scores["sync_offset"] == a1_synced.scores["sync_offset"]
    assert rec.scores["sync_conf"] == pytest.approx(a1_synced.scores["sync_conf"], rel=0.1)  # AAC vs. the wav


def test_d9_no_speech(landmarks_stage, person_stage, footage, weights_dir):
    from stages.base import StageContext
    from stages.sync import SyncStage

    rec = _tracked(person_stage, footage / D9)
    (r,) = landmarks_stage.process([copy.deepcopy(rec)])
    assert not r.alive and r.stage == "sync" and r.reason == "no_speech", (r.reason, r.message)
    assert r.scores["speech_ratio"] < 0.01
    assert r.scores["sync_offset"] is None and "audio_shift_frames" not in r.data
    # score-only: the threshold is only noted, the clip goes on being scored
    st = SyncStage(landmarks_stage.params, StageContext(weights_dir=str(weights_dir), score_only=True))
    (s,) = st.process([copy.deepcopy(rec)])
    st.close()
    assert s.alive and "sync:no_speech" in s.would_reject
    assert s.scores["sync_conf"] is not None and s.scores["sync_shift_frames"] == 0


# ---------------------------------------------------------------------------------------------------------
# syncnet backend

@pytest.fixture(scope="module")
def random_syncnet(tmp_path_factory, weights_dir):
    """A weights folder with a randomly initialised SyncNet saved as syncnet_v2.model (a state dict in torch's
    legacy format, like the published file; batch-norm statistics randomised too) and the real Silero VAD."""
    import torch
    from syncnet_python.SyncNetModel import S

    from curation.weights import REGISTRY, sha256_file

    g = torch.Generator().manual_seed(1234)
    net = S()
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d, torch.nn.BatchNorm3d)):
                m.running_mean.copy_(torch.rand(m.num_features, generator=g) - 0.5)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) * 1.5 + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.copy_(torch.rand(m.num_features, generator=g) * 0.4 - 0.2)
    d = tmp_path_factory.mktemp("weights")
    path = d / REGISTRY["syncnet_v2"].path
    path.parent.mkdir(parents=True)
    torch.save(net.state_dict(), path, _use_new_zipfile_serialization=False)
    vad = d / REGISTRY["silero_vad"].path
    vad.parent.mkdir(parents=True)
    shutil.copy(weights_dir / REGISTRY["silero_vad"].path, vad)
    return types.SimpleNamespace(dir=d, path=path, sha256=sha256_file(path))


@pytest.fixture(scope="module")
def a1_short(person_stage, footage):
    """2.4 s of A1 (60 frames at 25 fps) with the person stage's track: enough for the equality check."""
    return _tracked(person_stage, footage / A1, 0.0, 2.4)


def _crops_and_audio(rec):
    from curation.perception import syncnet as sn
    from curation.media.ffmpeg import iter_frames, read_audio
    from curation.perception.tracks import boxes_at, frame_times

    boxes = boxes_at(rec.data["face_track"], frame_times(rec.start_s, rec.end_s, 25))
    rects = sn.crop_rects(boxes)
    region = sn.union_region(rects, rec.probe["width"], rec.probe["height"])
    frames = iter_frames(rec.source, rec.start_s, rec.end_s, fps=25, crop=region, pix_fmt="bgr24")
    crops = list(sn.iter_crops(frames, region[:2], rects))
    return boxes, crops, sn.to_int16(read_audio(rec.source, rec.start_s, rec.end_s))


def test_syncnet_fast_path_equals_syncnet_python(random_syncnet, a1_short, tmp_path):
    import cv2
    import torch
    from scipy.io import wavfile
    from syncnet_python.SyncNetInstance import SyncNetInstance

    from curation.perception import syncnet as sn

    _, crops, audio = _crops_and_audio(a1_short)
    assert len(crops) == 60 and crops[0].shape == (224, 224, 3)
    # syncnet-python reads the crops as JPEG frames and the audio as a 16 kHz wav from its tmp_dir
    for i, c in enumerate(crops):
        cv2.imwrite(str(tmp_path / f"{i + 1:06d}.jpg"), c)
    wavfile.write(str(tmp_path / "audio.wav"), 16000, audio)
    opt = types.SimpleNamespace(tmp_dir=str(tmp_path), batch_size=20, vshift=15)
    with torch.no_grad():  # the same numbers, without the autograd graph syncnet-python builds
        ref_off, ref_conf, ref_dist = SyncNetInstance(net=sn.load_syncnet(str(random_syncnet.path)), device="cpu").evaluate(opt)

    same = [cv2.imread(str(tmp_path / f"{i + 1:06d}.jpg")) for i in range(len(crops))]
    fast = sn.FastSyncNet(sn.load_syncnet(str(random_syncnet.path), random_syncnet.sha256), "cpu", batch_windows=16)
    res = fast.evaluate(iter(same), audio, vshift=15)
    assert res.syncnet_offset == ref_off
    assert res.offset == -ref_off  # the pipeline's sign: positive = audio lags
    assert res.conf == pytest.approx(ref_conf, abs=1e-4)
    assert res.min_dist == pytest.approx(ref_dist, abs=1e-4)
    assert res.n_windows == 60 - 5
    # not a degenerate comparison: the distances do vary with the shift
    assert np.ptp(res.mean_dists) > 1e-3


def test_syncnet_crops_match_syncnet_python_crop(a1_short, tmp_path):
    """Our crop rectangles are syncnet-python's: its own `_crop` (which writes an XVID AVI) on the same JPEG
    frames and track gives the same crops up to the codec's loss; a 2-pixel shift is clearly worse."""
    import cv2
    from syncnet_python.syncnet_pipeline import PipelineConfig, SyncNetPipeline

    from curation.perception import syncnet as sn

    boxes, _, _ = _crops_and_audio(a1_short)
    (tmp_path / "fr").mkdir()
    ffmpeg("-i", a1_short.source, "-t", "2.4", "-q:v", "2", "-f", "image2", str(tmp_path / "fr" / "%06d.jpg"))
    ffmpeg("-i", a1_short.source, "-t", "2.4", "-ac", "1", "-ar", "16000", str(tmp_path / "a.wav"))
    frames = sorted(str(p) for p in (tmp_path / "fr").glob("*.jpg"))
    boxes = boxes[:len(frames)]
    owner = types.SimpleNamespace(cfg=PipelineConfig())  # _crop only reads self.cfg
    avi = SyncNetPipeline._crop(owner, {"frame": np.arange(len(frames)), "bbox": boxes}, frames,
                                str(tmp_path / "a.wav"), tmp_path / "crop" / "00000")
    cap = cv2.VideoCapture(avi)
    theirs = []
    while True:
        ok, im = cap.read()
        if not ok:
            break
        theirs.append(im.astype(np.float64))
    cap.release()
    assert len(theirs) == len(frames)
    rects = sn.crop_rects(boxes)

    def diff(shift):
        ours = [sn.cut_crop(cv2.imread(f), (0, 0), r + shift) for f, r in zip(frames, rects)]
        return float(np.mean([np.abs(a - b).mean() for a, b in zip(ours, theirs)]))

    d0, d2 = diff(0), diff(2)
    assert d0 < 5.0 and d0 < 0.7 * d2, (d0, d2)


def test_syncnet_stage_end_to_end(random_syncnet, a1_short):
    from curation.engine.config import load_manifest
    from stages.base import StageContext
    from stages.sync import SyncStage

    m = load_manifest("talkverse")
    p = m.params("sync")
    assert p.backend == "syncnet" and p.max_abs_offset == 3 and p.syncnet_min_conf == 1.6
    assert SyncStage.required_weights(p) == ["silero_vad", "syncnet_v2"]
    ctx = StageContext(weights_dir=str(random_syncnet.dir))
    st = SyncStage(p.model_copy(update={"syncnet_sha256": random_syncnet.sha256}), ctx)
    clip = copy.deepcopy(a1_short)
    clip.end_s = 1.6  # 40 frames of the same track are enough here
    (rec,) = st.process([copy.deepcopy(clip)])
    _audit_ok(rec, "syncnet")
    assert rec.reason is None or rec.reason in ("low_sync_conf", "av_offset"), (rec.reason, rec.message)
    assert rec.scores["sync_offset"] == -rec.scores["sync_offset_syncnet"]
    assert rec.scores["sync_min_dist"] > 0 and np.isfinite(rec.scores["sync_conf"])
    # the stage's crops are not JPEG-compressed: its numbers equal the fast path on the raw crops
    _, crops, audio = _crops_and_audio(clip)
    res = st._get_syncnet().evaluate(iter(crops), audio)
    assert rec.scores["sync_conf"] == pytest.approx(res.conf, abs=1e-6)
    st.close()
    # the published file's sha256 is checked: these random weights are refused under the manifest's value
    st2 = SyncStage(p, ctx)
    (bad,) = st2.process([copy.deepcopy(clip)])
    assert bad.reason == "error:sync" and "sha256" in bad.message


# ---------------------------------------------------------------------------------------------------------
# landmarks backend: what the writer does with an offset, voice-over, nothing measured

A5 = "A5_vexpress_aoc_gt_5s.mp4"
S16 = "S16_SoniTranslate_man-outdoors_phone-noisy_10s.mp4"
N01 = "N01_SoniTranslate_NOTSPEAKER_man-outdoors_TTS-dub_9s.mp4"


def _lag_samples(x, ref, max_lag=4000):
    """Lag (samples) at which x best matches ref: x[t] ~ ref[t + lag]."""
    n = min(len(x), len(ref))
    x, ref = x[:n] - x[:n].mean(), ref[:n] - ref[:n].mean()
    lags = range(-max_lag, max_lag + 1, 8)
    cc = [np.dot(x[max(0, -k):n - max(0, k)], ref[max(0, k):n - max(0, -k)]) for k in lags]
    return list(lags)[int(np.argmax(cc))]


def test_writer_does_not_shift_an_unreliable_offset(landmarks_stage, person_stage, footage, weights_dir):
    """A5 is in sync (its lip closures meet its silences and bursts within a frame: `curation sync-view`), but
    the estimator finds a 3-frame offset, with a confidence under the manifest's landmarks_shift_min_conf (the
    level above which, on the benchmark, shifted clips land within a frame of the truth); the envelope
    estimator's vote keeps the clip. The writer leaves its audio where it is (the first estimator's writer
    shifted such clips by their offset, putting them out of sync). With the shift level at 0 the writer does
    shift it, by the offset less shift_margin_frames; with unsure_offset: reject it is rejected."""
    import io

    from scipy.io import wavfile

    from curation.media.ffmpeg import read_audio
    from stages.base import StageContext
    from stages.sync import SyncStage
    from stages.write import WriteStage

    a5 = _tracked(person_stage, footage / A5)
    p = landmarks_stage.params
    (rec,) = landmarks_stage.process([copy.deepcopy(a5)])
    assert rec.alive, (rec.reason, rec.message)
    off = rec.scores["sync_offset"]
    assert abs(off) > p.shift_margin_frames and rec.scores["sync_conf"] < p.landmarks_shift_min_conf, rec.scores
    assert rec.labels["sync_shift"] == "unsure" and rec.scores["sync_shift_frames"] == 0
    assert "audio_shift_frames" not in rec.data

    ctx = StageContext(weights_dir=str(weights_dir))
    writer = WriteStage(WriteStage.Params(), ctx)

    def written_lag(r):
        (w,) = writer.process([r])
        rate, x = wavfile.read(io.BytesIO(w.blobs["wav"]))
        assert rate == 16000
        return _lag_samples(x.astype(np.float64), read_audio(r.source, r.start_s, r.end_s).astype(np.float64))

    assert abs(written_lag(copy.deepcopy(rec))) <= 80  # its own audio, where it was
    # (a fresh landmarker: its numbers may differ slightly from the shared one's, which tracked other clips)
    sure = SyncStage(p.model_copy(update={"landmarks_shift_min_conf": 0.0}), ctx)
    (shifted,) = sure.process([copy.deepcopy(a5)])
    sure.close()
    assert shifted.alive and shifted.labels["sync_shift"] == "shifted", shifted.labels
    off2 = shifted.scores["sync_offset"]
    # the offset less the margin, toward zero (+3 -> +2): a frame short, never past the truth by the estimate's error
    want = off2 - np.sign(off2) * p.shift_margin_frames
    assert abs(off2) > p.shift_margin_frames and shifted.data["audio_shift_frames"] == want
    assert abs(written_lag(shifted) - want * 640) <= 80  # 640 samples a frame at 16 kHz, 25 fps
    strict = SyncStage(p.model_copy(update={"unsure_offset": "reject"}), ctx)
    (rej,) = strict.process([copy.deepcopy(a5)])
    strict.close()
    assert not rej.alive and rej.reason == "unsure_offset", (rej.reason, rej.message)


def test_voice_over_is_not_the_speaker(landmarks_stage, person_stage, footage):
    """N01 is S16's video with a synthetic dubbed voice: rejected as not_speaker. S16 itself (the same video with
    its own voice, noisy phone audio) is measured in sync and is never called not_speaker: its lips follow its
    voice more than N01's follow the dub. (The default manifest rejects S16 as low_sync_conf: it is the one
    in-sync original of the benchmark under landmarks_min_conf without the envelope's vote.)"""
    (s16,) = landmarks_stage.process([_tracked(person_stage, footage / S16)])
    assert abs(s16.scores["sync_offset"]) <= 1 and s16.reason != "not_speaker", (s16.reason, s16.message)
    (n01,) = landmarks_stage.process([_tracked(person_stage, footage / N01)])
    assert not n01.alive and n01.stage == "sync" and n01.reason == "not_speaker", (n01.reason, n01.message)
    assert n01.scores["speech_ratio"] > 0.5 and n01.scores["sync_face_frac"] > 0.95  # speech, and a face
    assert s16.scores["sync_conf"] > n01.scores["sync_conf"]


def test_nothing_measured_is_null(landmarks_stage, a1_tracked):
    """1 s of A1 is too short for a +-15-frame search: no offset and no confidence (null, not 0), rejected with
    a reason that says why."""
    rec = _same_video(a1_tracked, a1_tracked.source)
    rec.end_s = rec.start_s + 1.0
    (r,) = landmarks_stage.process([rec])
    assert not r.alive and r.reason == "sync_unmeasured" and "not measured" in r.message, (r.reason, r.message)
    assert r.scores["sync_offset"] is None and r.scores["sync_conf"] is None
    assert r.scores["sync_shift_frames"] is None and "audio_shift_frames" not in r.data


def test_shift_decision_stops_a_margin_short():
    """The writer's shift: the offset less the margin toward zero, only at the shift confidence, never for a
    rejected clip; an offset within the margin is left alone whatever the confidence (so never `unsure`)."""
    from stages.sync import shift_decision

    assert shift_decision(3, 9.0, True, True, 3.9, 1) == (2, "shifted")
    assert shift_decision(-2, 9.0, True, True, 3.9, 1) == (-1, "shifted")
    assert shift_decision(-2, 9.0, True, True, 3.9, 0) == (-2, "shifted")
    assert shift_decision(1, 0.1, True, True, 3.9, 1) == (0, "none")
    assert shift_decision(-1, 0.1, True, True, 3.9, 0) == (0, "unsure")
    assert shift_decision(2, 1.0, True, True, 3.9, 1) == (0, "unsure")
    assert shift_decision(2, 9.0, True, False, 3.9, 1) == (0, "off")
    assert shift_decision(3, 9.0, False, True, 3.9, 1) == (0, "none")
    assert shift_decision(0, 9.0, True, True, 3.9, 0) == (0, "none")
