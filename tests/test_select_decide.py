"""The re-decision of `curation select` on small synthetic audits (no Ray, no footage): what is stricter, what
needs a rerun, missing measurements, --where, tiers."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from curation.engine.select import Check, Selection, SelectError, Source, decide, parse_sets

STAGES = ["probe", "scenes", "person", "quality", "sync", "skeleton", "write"]
CHECKS = [Check("person", "face_any_frac", "min_face_frac", "min", "no_face"),
          Check("person", "multi_frac", "max_multi_frac", "max", "multi_person"),
          Check("sync", "sync_conf", "min_conf", "min", "low_sync_conf")]
BOUNDS = {("person", "min_face_frac"): 0.5, ("person", "max_multi_frac"): 0.2, ("sync", "min_conf"): 0.3}


def _clips(rows):
    cols = ["key", "source", "clip_index", "duration_s", "status", "stage", "reason", "message",
            "face_any_frac", "multi_frac", "sync_conf", "shard"]
    return pd.DataFrame([dict(zip(cols, r)) for r in rows])


def _src(rows, score_only=False):
    return Source(root=None, clips=_clips(rows), checks=CHECKS, stages=STAGES, manifest_raw={}, score_only=score_only)


NORMAL = [
    # key, source, idx, dur, status, stage, reason, message, face, multi, conf, shard
    ("a", "A", 0, 8.0, "kept", None, None, None, 1.0, 0.0, 0.9, "shard-000000.tar"),
    ("b", "B", 0, 9.0, "kept", None, None, None, 0.9, 0.1, 0.4, "shard-000000.tar"),
    ("c", "C", 0, 6.0, "rejected", "person", "no_face", "face_any_frac=0.1", 0.1, np.nan, np.nan, None),
    ("d", "D", 0, 7.0, "rejected", "sync", "low_sync_conf", "sync_conf=0.25", 1.0, 0.0, 0.25, None),
    ("e", "E", 0, 5.0, "rejected", "probe", "no_audio", None, np.nan, np.nan, np.nan, None),
    ("f", "F", 0, 5.0, "kept", None, None, None, 1.0, 0.0, np.nan, "shard-000000.tar"),
]


def test_same_thresholds_give_the_same_decisions():
    d = decide(_src(NORMAL), Selection(CHECKS, dict(BOUNDS)))
    # f was kept with a missing sync_conf (it could only happen with a bug upstream): now it fails, and is counted
    assert list(d.status) == ["kept", "kept", "rejected", "rejected", "rejected", "rejected"]
    assert [None if pd.isna(x) else x for x in d.reason[:5]] == [None, None, "no_face", "low_sync_conf", "no_audio"]
    assert d.missing == {"sync_conf": 1} and d.needs_rerun.empty


def test_stricter_rejects_kept_clips_at_the_right_stage():
    b = {**BOUNDS, ("sync", "min_conf"): 0.5, ("person", "max_multi_frac"): 0.05}
    d = decide(_src(NORMAL[:5]), Selection(CHECKS, b))
    assert list(d.status) == ["kept", "rejected", "rejected", "rejected", "rejected"]
    assert (d.stage[1], d.reason[1]) == ("person", "multi_person")  # first failing stage wins, not sync
    assert d.message[1] == "multi_frac=0.1, needs <= 0.05"
    assert d.needs_rerun.empty


def test_looser_names_the_clips_that_need_a_rerun():
    b = {**BOUNDS, ("sync", "min_conf"): 0.2, ("person", "min_face_frac"): 0.05}
    d = decide(_src(NORMAL[:5]), Selection(CHECKS, b))
    assert sorted(d.needs_rerun["key"]) == ["c", "d"]
    assert dict(zip(d.needs_rerun["key"], d.needs_rerun["stage"])) == {"c": "person", "d": "sync"}


def test_score_only_run_takes_any_threshold():
    rows = [r[:4] + ("kept", None, None, None) + r[8:11] + (None,) for r in NORMAL[:4]]
    d = decide(_src(rows, score_only=True), Selection(CHECKS, {**BOUNDS, ("sync", "min_conf"): 0.2}))
    assert list(d.status) == ["kept", "kept", "rejected", "kept"]  # c: no face; d now passes sync
    assert d.needs_rerun.empty and d.missing == {}


def test_where_rejects_at_select():
    d = decide(_src(NORMAL[:5]), Selection(CHECKS, dict(BOUNDS), where="sync_conf > 0.5"))
    assert list(d.status) == ["kept", "rejected", "rejected", "rejected", "rejected"]
    assert (d.stage[1], d.reason[1]) == ("select", "where")
    with pytest.raises(SelectError, match="no_such_column"):
        decide(_src(NORMAL[:5]), Selection(CHECKS, dict(BOUNDS), where="no_such_column > 1"))


def test_parse_sets():
    assert parse_sets(["sync.min_conf=0.5", "person.face_backend=scrfd"]) == {"sync.min_conf": 0.5,
                                                                               "person.face_backend": "scrfd"}
    with pytest.raises(SelectError):
        parse_sets(["min_conf=0.5"])


def test_score_only_unchanged_bound_keeps_the_runs_verdict():
    """A bound the run applied unchanged: its verdict (would_reject) stands, also where the stage recorded no
    value (a check it applies only when it measures); a changed bound is decided on the values."""
    applied = [Check(c.stage, c.score, c.key, c.direction, c.reason, False, BOUNDS[(c.stage, c.key)]) for c in CHECKS]
    rows = [("a", "A", 0, 8.0, "kept", None, None, None, 1.0, 0.0, np.nan, None),   # sync not measured, passed
            ("b", "B", 0, 8.0, "kept", None, None, None, 1.0, 0.0, 0.1, None)]     # would be low_sync_conf
    src = Source(root=None, clips=_clips(rows).assign(would_reject=[None, "sync:low_sync_conf"]), checks=applied,
                 stages=STAGES, manifest_raw={}, score_only=True)
    d = decide(src, Selection(CHECKS, dict(BOUNDS)))
    assert list(d.status) == ["kept", "rejected"] and d.reason[1] == "low_sync_conf" and d.missing == {}
    d = decide(src, Selection(CHECKS, {**BOUNDS, ("sync", "min_conf"): 0.05}))
    assert list(d.status) == ["rejected", "kept"] and d.missing == {"sync_conf": 1}
