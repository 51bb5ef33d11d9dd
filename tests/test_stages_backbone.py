"""Probe, scenes and write stage logic on small batches, without Ray."""

from __future__ import annotations

import pytest

from conftest import clip_record, ffmpeg, source_record
from curation.engine.config import load_manifest
from curation.engine.record import REJECTED
from stages.scenes import ScenesParams, ScenesStage, shots_from_cuts
from stages.write import WriteStage


def test_shots_from_cuts_trims_and_splits():
    spans = shots_from_cuts([50, 100], 400, 25.0, trim=3, max_s=5.0)
    assert spans[0] == pytest.approx((0.0, 47 / 25))
    assert spans[1] == pytest.approx((53 / 25, 97 / 25))
    long = spans[2:]
    assert len(long) == 3 and all(e - s <= 5.0 + 1e-9 for s, e in long)
    assert long[0][0] == pytest.approx(103 / 25) and long[-1][1] == pytest.approx(16.0)


def test_scenes_stage_on_c1_and_adaptive_detector(footage, stage_ctx):
    src = source_record(footage / "C1_documentary_6shots_anamorphic_25s.mp4")
    assert src.probe["sar"] != 1.0 and src.probe["width"] == 1024  # anamorphic: square-pixel width
    for det in ("content", "adaptive"):
        out = ScenesStage(ScenesParams(detector=det), stage_ctx()).process([src])
        starts = [round(r.start_s - 3 / 25, 2) for r in out[1:]]
        assert starts == pytest.approx([2.8, 6.8, 12.04, 16.84, 19.36], abs=2 / 25), det
        assert [r.n_siblings for r in out] == [6] * 6


def test_probe_reasons_for_generated_files(tmp_path, footage):
    ffmpeg("-f", "lavfi", "-i", "testsrc=size=64x64:rate=25", "-t", "6", "-c:v", "libx264", str(tmp_path / "noaudio.mp4"))
    rec = source_record(tmp_path / "noaudio.mp4")
    assert rec.status == REJECTED and rec.reason == "no_audio"
    rec = source_record(tmp_path / "does-not-exist.mp4")
    assert rec.reason == "unreadable" and rec.message


def test_write_applies_rotation_and_external_audio(tmp_path, footage, stage_ctx):
    src = footage / "A1_hdtf_bob_menendez_talking_8s.mp4"
    plain, rotated = tmp_path / "plain.mp4", tmp_path / "rot.mp4"
    ffmpeg("-i", str(src), "-t", "5.5", "-vf", "crop=320:200:0:0", "-c:v", "libx264", "-c:a", "aac", str(plain))
    ffmpeg("-i", str(plain), "-c", "copy", "-metadata:s:v:0", "rotate=90", str(rotated))  # display matrix
    rec = clip_record(rotated, 0.0, 5.0, audio_path=str(footage / "F3_hdtf_rd_radio31_8s.wav"))
    assert rec.probe["rotation"] in (90, 270) and (rec.probe["width"], rec.probe["height"]) == (200, 320)
    (out,) = WriteStage(load_manifest().params("write"), stage_ctx()).process([rec])
    assert out.status != REJECTED, out.message
    (tmp_path / "o.mp4").write_bytes(out.blobs["mp4"])
    import json
    import subprocess

    streams = json.loads(subprocess.run(["ffprobe", "-v", "error", "-print_format", "json", "-show_streams",
                                         str(tmp_path / "o.mp4")], capture_output=True, text=True).stdout)["streams"]
    v = next(s for s in streams if s["codec_type"] == "video")
    assert (v["width"], v["height"]) == (200, 320) and int(v["nb_frames"]) == 125
    assert out.data["n_frames"] == 125
