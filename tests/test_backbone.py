"""The backbone on real footage with real ffmpeg and a real local Ray: shards, index, audit, resume."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import webdataset as wds

from conftest import run_cli

C1_CUTS_S = [2.8, 6.8, 12.04, 16.84, 19.36]  # FOOTAGE.md


def ffprobe_streams(path: Path) -> list[dict]:
    p = subprocess.run(["ffprobe", "-v", "error", "-print_format", "json", "-show_streams", str(path)],
                       capture_output=True, text=True, check=True)
    return json.loads(p.stdout)["streams"]


def test_a1_is_one_sample_readable_by_webdataset(pipeline_output, tmp_path):
    index = pd.read_parquet(pipeline_output / "index.parquet")
    a1 = index[index["source"].str.contains("A1_hdtf")]
    assert len(a1) == 1, index[["key", "source"]]
    row = a1.iloc[0]
    shard = pipeline_output / "shards" / row["shard"]
    samples = {s["__key__"]: s for s in wds.WebDataset(str(shard), shardshuffle=False)}
    sample = samples[row["key"]]
    meta = json.loads(sample["json"])
    assert meta["start_s"] == pytest.approx(row["start_s"]) and meta["fps"] == 25
    (tmp_path / "a1.mp4").write_bytes(sample["mp4"])
    (tmp_path / "a1.wav").write_bytes(sample["wav"])
    v = [s for s in ffprobe_streams(tmp_path / "a1.mp4") if s["codec_type"] == "video"][0]
    a = [s for s in ffprobe_streams(tmp_path / "a1.mp4") if s["codec_type"] == "audio"][0]
    assert v["codec_name"] == "h264" and v["avg_frame_rate"] == "25/1"
    assert int(v["nb_frames"]) == meta["n_frames"] == round((row["end_s"] - row["start_s"]) * 25)
    assert a["codec_name"] == "aac" and int(a["sample_rate"]) == 16000 and a["channels"] == 1
    w = ffprobe_streams(tmp_path / "a1.wav")[0]
    assert w["codec_name"] == "pcm_s16le" and int(w["sample_rate"]) == 16000 and w["channels"] == 1
    assert float(w["duration"]) == pytest.approx(meta["n_frames"] / 25, abs=0.02)


def test_c1_cuts_land_within_two_frames(pipeline_output):
    clips = pd.read_parquet(pipeline_output / "audit" / "clips.parquet")
    c1 = clips[clips["source"].str.contains("C1_documentary")].sort_values("clip_index")
    assert len(c1) == 6, c1[["start_s", "end_s", "status", "reason"]]
    trim = 3 / 25
    found_ends = c1["end_s"].to_numpy()[:-1] + trim
    found_starts = c1["start_s"].to_numpy()[1:] - trim
    assert np.abs(found_ends - C1_CUTS_S).max() <= 2 / 25 + 1e-6
    assert np.abs(found_starts - C1_CUTS_S).max() <= 2 / 25 + 1e-6
    # every candidate is accounted for with a stage and a reason, or kept
    assert (c1["status"].eq("kept") | c1["reason"].notna()).all()
    short = c1[c1["end_s"] - c1["start_s"] < 5.0]
    assert (short["reason"] == "too_short").all() and (short["stage"] == "scenes").all()


def test_every_source_has_a_row_with_a_reason(pipeline_output, pipeline_input):
    _, bad = pipeline_input
    sources = pd.read_parquet(pipeline_output / "audit" / "sources.parquet")
    names = sources["source"].map(lambda s: Path(s).name)
    assert len(sources) == len(set(names)) == 8 + len(bad)
    by_name = dict(zip(names, sources.itertuples()))
    assert by_name["D5_lowq_carphone_176x144_pristine_4s.mp4"].reason == "no_audio"
    assert by_name["A4_retalk_woman_glasses_talking_5s.mp4"].reason == "too_short"
    for name, reason in bad.items():
        row = by_name[name]
        assert row.status == "rejected" and row.reason == reason, (name, row.reason, row.message)
    assert sources.loc[sources["status"] == "rejected", "message"].notna().all()


def test_audit_contract(pipeline_output):
    clips = pd.read_parquet(pipeline_output / "audit" / "clips.parquet")
    index = pd.read_parquet(pipeline_output / "index.parquet")
    for col in ("key", "source", "start_s", "end_s", "status", "stage", "reason", "shot_duration_s"):
        assert col in clips.columns
    for col in ("key", "shard", "source", "start_s", "end_s", "duration_s", "width", "height", "fps"):
        assert col in index.columns
    assert set(clips["status"]) <= {"kept", "rejected"}
    assert clips["key"].is_unique and index["key"].is_unique
    assert set(index["key"]) == set(clips.loc[clips["status"] == "kept", "key"])
    assert (clips.loc[clips["status"] == "rejected", "reason"].notna()).all()
    funnel = json.loads((pipeline_output / "audit" / "funnel.json").read_text())
    names = [s["stage"] for s in funnel["stages"]]
    assert names[0] == "probe" and names[1] == "scenes" and names[-1] == "write"
    assert funnel["totals"]["kept_clips"] == len(index)
    for s in funnel["stages"]:
        assert s["seconds_in"] + 1e-6 >= s["seconds_out"] >= 0 and s["cpu_s"] >= 0 and s["wall_s"] >= 0
        if s["stage"] != "scenes":  # scenes turns sources into clips: counts may grow, seconds may not
            assert s["in"] >= s["out"] >= 0
    assert funnel["stages"][-1]["out"] == len(index)
    # clips out of one stage go into the next
    for prev, nxt in zip(funnel["stages"][1:], funnel["stages"][2:]):
        assert prev["out"] == nxt["in"]


def test_shards_hold_exactly_the_index(pipeline_output):
    index = pd.read_parquet(pipeline_output / "index.parquet")
    keys = []
    for shard in sorted((pipeline_output / "shards").glob("*.tar")):
        keys += [s["__key__"] for s in wds.WebDataset(str(shard), shardshuffle=False)]
    assert sorted(keys) == sorted(index["key"])
    assert not list(pipeline_output.rglob("*.tmp"))


def test_second_run_adds_nothing(pipeline_output, pipeline_input):
    before = pd.read_parquet(pipeline_output / "index.parquet")
    shards_before = sorted(p.name for p in (pipeline_output / "shards").glob("*.tar"))
    p = run_cli("run", "--input", str(pipeline_input[0]), "--output", str(pipeline_output), "--num-cpus", "2")
    assert "0 processed" in p.stdout
    after = pd.read_parquet(pipeline_output / "index.parquet")
    assert sorted(after["key"]) == sorted(before["key"])
    assert sorted(p.name for p in (pipeline_output / "shards").glob("*.tar")) == shards_before


def test_report_and_inspect(pipeline_output):
    p = run_cli("report", str(pipeline_output), "--no-html")
    funnel = json.loads((pipeline_output / "audit" / "funnel.json").read_text())
    assert "probe" in p.stdout and str(funnel["totals"]["kept_clips"]) in p.stdout
    shard = sorted((pipeline_output / "shards").glob("*.tar"))[0]
    p = run_cli("inspect", str(shard))
    n = sum(1 for _ in wds.WebDataset(str(shard), shardshuffle=False))
    assert n > 0 and p.stdout.rstrip().endswith(f"{n} samples")


def test_missing_input_and_bad_manifest_fail_with_one_line(tmp_path):
    p = run_cli("run", "--input", str(tmp_path / "nope"), "--output", str(tmp_path / "o"), check=False)
    assert p.returncode != 0 and "input not found" in p.stderr and len(p.stderr.strip().splitlines()) == 1
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nstages:\n  - name: probe\n    params: {min_duration_s: 5, bogus: 1}\n"
                   "  - name: scenes\n  - name: write\n")
    p = run_cli("run", "--input", str(tmp_path), "--output", str(tmp_path / "o"), "--manifest", str(bad), check=False)
    assert p.returncode != 0 and "stages[0].params.bogus: unknown key" in p.stderr and str(bad) in p.stderr
    bad.write_text("name: x\nstages:\n  - name: probe\n    params: {min_duration_s: five}\n"
                   "  - name: scenes\n  - name: write\n")
    p = run_cli("run", "--input", str(tmp_path), "--output", str(tmp_path / "o"), "--manifest", str(bad), check=False)
    assert p.returncode != 0 and "min_duration_s" in p.stderr and len(p.stderr.strip().splitlines()) == 1
