"""Scenes stage, two passes (reference frames, then only the B-frame gaps a cut may hide in): the same cuts as
a full decode and as PySceneDetect's CLI on shared footage with real cuts, also where the cuts fall inside
B-frame gaps; a 160-px source is compared at its own size (S14's cut, which the CLI finds)."""

from __future__ import annotations

from conftest import ffmpeg, source_record
from stages.scenes import ScenesParams, detect_cuts, detect_cuts_two_pass

C1_CUTS = [70, 170, 301, 421, 484]  # PySceneDetect 0.6.7.1's CLI (detect-content, defaults), 0-based


def _both(path, src, p):
    size = (int(src.probe["width"]), int(src.probe["height"]))
    full, n = detect_cuts(str(path), float(src.probe["fps"]), size, p)
    two = detect_cuts_two_pass(str(path), size, p)
    assert two is not None
    return full, n, two


def test_two_pass_same_cuts_as_a_full_decode_on_c1(footage):
    path = footage / "C1_documentary_6shots_anamorphic_25s.mp4"
    src = source_record(path)
    full, n, (cuts, n2, stats) = _both(path, src, ScenesParams(coarse_factor=0.75))
    assert full == cuts == C1_CUTS and n == n2 == 628
    assert stats["decoded"] < 0.6 * n  # only the reference frames (and gaps) decoded


def test_two_pass_decodes_the_b_frame_gaps_that_hide_cuts(tmp_path, footage):
    """C1's first 8 s (cuts at frames 70 and 170) re-encoded with B-frames and no keyframe at a cut: the
    cuts lie inside B-frame gaps, which the second pass decodes exactly."""
    path = tmp_path / "c1_bgaps.mp4"
    ffmpeg("-i", str(footage / "C1_documentary_6shots_anamorphic_25s.mp4"), "-t", "8", "-an", "-vf", "scale=352:288",
           "-c:v", "libx264", "-preset", "veryfast", "-bf", "3", "-x264-params", "scenecut=0:keyint=300:b-pyramid=normal",
           "-crf", "23", str(path))
    src = source_record(path)
    full, n, (cuts, _, stats) = _both(path, src, ScenesParams(coarse_factor=0.75))
    assert full == cuts == C1_CUTS[:2] and n == 200
    assert stats["candidates"] >= 2 and stats["gap_frames"] >= 2, stats


def test_hevc_two_pass_no_false_cut(footage):
    """S01 (HEVC, P-frames that reference B-frames): skipping only unreferenced frames keeps every decoded
    frame exact (skipping every B-frame damaged them: two false cuts at its keyframes)."""
    path = footage / "S01_LatentSync_man-black-sweater_studio-talk_hevc_20s.mp4"
    cuts, n, stats = detect_cuts_two_pass(str(path), (1080, 1920), ScenesParams())
    assert cuts == [] and n == 502 and stats["decoded"] < n


def test_small_source_compared_at_its_own_size(footage):
    """S14 (160x160): scaled up to 256 px its cut at frame 91 scored under the threshold; the CLI finds it."""
    path = footage / "S14_deep_avsr-LRS2_man-BBC_160px_11s.mp4"
    src = source_record(path)
    full, _, (cuts, _, _) = _both(path, src, ScenesParams())
    assert full == cuts == [91]
