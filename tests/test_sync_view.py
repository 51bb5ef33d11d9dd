"""`curation sync-view`: a clip's lips against its sound, to check a sync decision by eye.

- the iBUG lip gap is exact on points placed by hand, and missing where a point used is missing;
- `shifted` moves the audio the way the writer does (later for a positive shift, the length kept);
- on a kept clip of a real run (A1), the lip gap read from the written pose.npz (the skeleton's 68 iBUG
  face points, in the written clip's pixels) is the sync stage's own FaceLandmarker lip gap (mesh points) on
  the same span of the source, to the frame: with the manifest's skeleton.face_from_sync the two routes see
  the same landmarker, so they must agree frame for frame (r about 1.0 here, 0.89 one frame apart); and the
  command draws the picture and names a missing key."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from conftest import run_cli

from curation.formats.wholebody import FACE
from curation.report import sync_view

A1 = "A1_hdtf_bob_menendez_talking_8s.mp4"


def _face(gap_px: float, iod_px: float) -> np.ndarray:
    """68 iBUG points: eye corners iod_px apart, the three inner-lip pairs gap_px apart, the rest spread out."""
    p = np.stack([np.arange(68, dtype=np.float64) * 3.0, np.full(68, 50.0)], 1)
    p[36], p[45] = (100.0, 40.0), (100.0 + iod_px, 40.0)
    for k, (up, lo) in enumerate(sync_view.IBUG_INNER_LIP_PAIRS):
        p[up], p[lo] = (120.0 + 5 * k, 90.0), (120.0 + 5 * k, 90.0 + gap_px)
    return p


def test_lip_gap_ibug_and_audio_shift():
    faces = np.stack([_face(6.0, 60.0), _face(0.0, 60.0), _face(12.0, 120.0), _face(6.0, 60.0)])
    score = np.ones((4, 68))
    score[3, 62] = 0.0  # an inner-lip point not found: no measurement in that frame, never a number
    gap = sync_view.lip_gap_ibug(faces, score)
    assert gap[:3] == pytest.approx([0.1, 0.0, 0.1]) and np.isnan(gap[3])
    kp = np.zeros((4, 1, 133, 3), np.float32)  # pose.npz layout: the face is COCO-WholeBody 23-90
    kp[:, 0, FACE, :2], kp[:, 0, FACE, 2] = faces, score
    assert np.array_equal(sync_view.lip_gap_from_pose(kp), gap, equal_nan=True)

    a = np.arange(1, 6401, dtype=np.float32)  # 0.4 s at 16 kHz = 10 frames at 25 fps
    later = sync_view.shifted(a, 2, 16000, 25.0)  # +2 frames: the audio 80 ms later, silence at the end
    assert len(later) == len(a) and later[0] == a[1280] and not later[-1280:].any()
    earlier = sync_view.shifted(a, -2, 16000, 25.0)
    assert len(earlier) == len(a) and not earlier[:1280].any() and earlier[1280] == a[0]


def test_kept_clip_lips_follow_the_sync_stages_own(pipeline_output, footage, weights_dir, tmp_path):
    index = pd.read_parquet(pipeline_output / "index.parquet")
    row = index[index["source"].str.contains("A1_hdtf")].iloc[0]
    written = sync_view.from_output(pipeline_output, row["key"])
    assert len(written.gap) == row["n_frames"] and np.isfinite(written.gap).mean() > 0.95
    assert written.facts["sync_offset"] == row["sync_offset"]
    source = sync_view.from_source(str(footage / A1), row["start_s"], row["end_s"], str(weights_dir))
    n = min(len(written.gap), len(source.gap))
    ok = np.isfinite(written.gap[:n]) & np.isfinite(source.gap[:n])
    r = np.corrcoef(written.gap[:n][ok], source.gap[:n][ok])[0, 1]
    assert r > 0.97, f"the written clip's lip gap and the sync stage's disagree: r = {r:.3f}"
    # one frame apart they agree less: the two routes are aligned to the frame
    r1 = np.corrcoef(written.gap[1:n][ok[1:] & ok[:-1]], source.gap[:n - 1][ok[1:] & ok[:-1]])[0, 1]
    assert r > r1 + 0.05

    out = tmp_path / "a1.png"
    p = run_cli("sync-view", str(pipeline_output), row["key"], "--out", str(out), "--span", "0:4")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 20_000
    assert "100 frames, 0.00-4.00 s" in p.stdout and "sync_offset: 0" in p.stdout
    bad = run_cli("sync-view", str(pipeline_output), "no-such-key", check=False)
    assert bad.returncode == 2 and "no kept clip 'no-such-key'" in bad.stderr
