"""person_bbox_xyxy (MediaPipe backend) holds the whole person: the top of the head and both shoulders.

TalkVerse makes its body masks from this box. Measured on the shared footage (2 s of each, brows-to-chin
height h of the 68 face points): the mask box's top lies 0.58-0.68 h above the brows (the top of the head);
the box around keypoints + 10 % only 0.26-0.36 h (the hairline), and on A1 it left out both shoulders."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import FOOTAGE
from test_skeleton import ctx, person_record

from stages.skeleton import SkeletonParams, SkeletonStage

HEADROOM = 0.45  # box top above the brows, in brows-to-chin heights: a head's top is ~0.6 above


@pytest.fixture(scope="module")
def person():
    from stages.person import PersonParams, PersonStage

    st = PersonStage(PersonParams(), ctx())
    yield st
    st.close()


@pytest.mark.parametrize("name,start", [("A7_liveportrait_s18_woman_medium_shot_9s.mp4", 1.0),
                                        ("A1_hdtf_bob_menendez_talking_8s.mp4", 1.0)])
def test_person_box_holds_head_and_shoulders(person, name, start):
    rec = person_record(person, FOOTAGE / name, start, start + 2.0)
    W, H = int(rec.probe["width"]), int(rec.probe["height"])
    boxes = {}
    for mode in ("mask", "keypoints"):
        st = SkeletonStage(SkeletonParams(person_box=mode), ctx())
        try:
            kpts, boxes[mode] = st.estimate(rec)
        finally:
            st.close()
    b = boxes["mask"]
    assert (b[:, 0] >= 0).all() and (b[:, 1] >= 0).all() and (b[:, 2] <= W).all() and (b[:, 3] <= H).all()
    face = kpts[:, 0, 23:91]
    ok = face[..., 2] > 0
    assert ok.any(1).mean() > 0.9
    rows = [t for t in range(len(face)) if ok[t].any()]
    brow = np.array([face[t, ok[t], 1].min() for t in rows])
    chin = np.array([face[t, ok[t], 1].max() for t in rows])
    head = (brow - b[rows, 1]) / (chin - brow)
    assert np.median(head) >= HEADROOM and (head >= HEADROOM).mean() > 0.9, np.median(head)
    old = (brow - boxes["keypoints"][rows, 1]) / (chin - brow)
    assert np.median(old) < HEADROOM  # what the keypoints' box gave: the hairline, not the head
    for t in rows:  # every face point inside
        fx, fy = face[t, ok[t], 0], face[t, ok[t], 1]
        assert b[t, 0] - 1 <= fx.min() and fx.max() <= b[t, 2] + 1 and fy.max() <= b[t, 3] + 1
    sh = kpts[:, 0, 5:7]  # shoulders found inside the frame: inside the box
    vis = (sh[..., 2] > 0.3) & (sh[..., 0] >= 0) & (sh[..., 0] < W) & (sh[..., 1] >= 0) & (sh[..., 1] < H)
    for t, j in zip(*np.nonzero(vis)):
        assert b[t, 0] - 2 <= sh[t, j, 0] <= b[t, 2] + 2 and b[t, 1] <= sh[t, j, 1] <= b[t, 3] + 2
