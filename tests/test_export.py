"""`curation export-talkverse DIR DEST`: TalkVerse's layout, read back the way its loader reads it."""

from __future__ import annotations

import io
import json
import subprocess
import tarfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import ffmpeg, run_cli


def ffprobe_video(path: Path) -> dict:
    p = subprocess.run(["ffprobe", "-v", "error", "-count_frames", "-show_entries",
                        "stream=codec_type,codec_name,avg_frame_rate,nb_read_frames", "-of", "json", str(path)],
                       capture_output=True, text=True, check=True)
    streams = json.loads(p.stdout)["streams"]
    v = [s for s in streams if s["codec_type"] == "video"]
    a = [s for s in streams if s["codec_type"] == "audio"]
    assert len(v) == 1, streams
    n, d = v[0]["avg_frame_rate"].split("/")
    return {"fps": float(n) / float(d), "frames": int(v[0]["nb_read_frames"]), "vcodec": v[0]["codec_name"],
            "acodec": a[0]["codec_name"] if a else None}


def shard_members(shard: Path) -> dict[str, bytes]:
    with tarfile.open(shard) as tf:
        return {m.name: tf.extractfile(m).read() for m in tf if m.isfile()}


def talkverse_scenes(scenes: str) -> list[tuple[int, int]]:
    """TalkVerse's parse of `scenes` (dataset_resolution_bins_roi.py): "start,end;start,end", inclusive."""
    out = []
    for seg in str(scenes).split(";"):
        se = seg.strip().split(",")
        if len(se) == 2:
            out.append((int(se[0]), int(se[1])))
    return out


def check_pose(npz: Path, frames: int) -> np.ndarray:
    with np.load(npz, allow_pickle=False) as z:
        assert sorted(z.files) == ["keypoints_info", "person_bbox_xyxy"]
        k, b = z["keypoints_info"], z["person_bbox_xyxy"]
    assert k.shape == (frames, 1, 133, 3), k.shape
    assert b.shape == (frames, 4), b.shape
    assert np.isfinite(k).all()
    return k


def test_export_pipeline_output(pipeline_output, tmp_path):
    dest = tmp_path / "talkverse"
    p = run_cli("export-talkverse", str(pipeline_output), str(dest))
    index = pd.read_parquet(pipeline_output / "index.parquet")
    assert len(index) > 0
    assert f"exported {len(index)} clips to {dest}" in p.stdout
    meta = pd.read_csv(dest / "meta.csv")
    assert list(meta.columns[:3]) == ["video_path", "fps", "scenes"]
    assert sorted(meta["key"]) == sorted(index["key"])
    assert sorted(p.name for p in (dest / "videos").iterdir()) == sorted(f"{k}.mp4" for k in index["key"])

    members: dict[str, bytes] = {}
    for shard in sorted(set(index["shard"])):
        members.update(shard_members(pipeline_output / "shards" / shard))
    has_pose = {name.split(".", 1)[0] for name in members if name.endswith(".pose.npz")}
    import yaml

    stages = [s["name"] for s in yaml.safe_load((pipeline_output / "manifest.yaml").read_text())["stages"]
              if s.get("enabled", True)]
    if "skeleton" in stages:
        assert has_pose == set(index["key"]), "every kept clip of a run with a skeleton stage has pose.npz"
    assert sorted(p.name for p in (dest / "dwpose").iterdir()) == sorted(f"{k}.npz" for k in has_pose)

    scores = [c for c in index.columns if c not in ("key", "shard", "source", "start_s", "end_s", "duration_s",
                                                    "width", "height", "fps", "n_frames", "audio_shift_frames")]
    idx = index.set_index("key")
    for _, row in meta.iterrows():
        # the loader: os.path.join(base_path, video_path); video id = the file name before its first dot
        video = dest / row["video_path"]
        assert not Path(row["video_path"]).is_absolute() and video.is_file()
        assert row["video_path"].split("/")[-1].split(".")[0] == row["key"]
        info = ffprobe_video(video)
        assert float(row["fps"]) == 25.0 and info["fps"] == 25.0  # TalkVerse asserts 25 fps
        assert info["vcodec"] == "h264" and info["acodec"] == "aac"  # it needs an audio stream
        assert info["frames"] == row["num_frames"]
        assert talkverse_scenes(row["scenes"]) == [(0, info["frames"] - 1)]
        # never re-encoded: the bytes of the shard's mp4
        assert video.read_bytes() == members[f"{row['key']}.mp4"]
        for c in scores:  # our scores ride along as extra columns
            want = idx.loc[row["key"], c]
            if isinstance(want, (int, float, np.floating)) and not pd.isna(want):
                assert row[c] == pytest.approx(float(want), rel=1e-9), c
        if row["key"] in has_pose:
            assert row["dwpose_path"] == f"dwpose/{row['key']}.npz"
            check_pose(dest / row["dwpose_path"], info["frames"])
        else:
            assert pd.isna(row["dwpose_path"])
    for npz in (dest / "dwpose").iterdir():  # every .npz read back
        check_pose(npz, int(meta.set_index("key").loc[npz.stem, "num_frames"]))
    assert not list(dest.rglob("*.tmp"))


def test_export_reencodes_other_rates_and_resamples_pose(pipeline_output, tmp_path):
    """A run written at 30 fps (a manifest with video.fps: 30) is exported at 25 fps: the video re-encoded,
    the skeleton resampled to the new frame count (nearest frame), the audio kept."""
    import webdataset as wds

    from curation.formats import pose_npz
    from curation.engine.output import OutputDir

    index = pd.read_parquet(pipeline_output / "index.parquet")
    row = index.iloc[0]
    clip = shard_members(pipeline_output / "shards" / row["shard"])[f"{row['key']}.mp4"]
    (tmp_path / "in.mp4").write_bytes(clip)
    ffmpeg("-i", str(tmp_path / "in.mp4"), "-t", "3", "-vf", "fps=30", "-c:v", "libx264", "-preset", "ultrafast",
           "-c:a", "copy", str(tmp_path / "clip30.mp4"))
    n30 = ffprobe_video(tmp_path / "clip30.mp4")["frames"]
    assert n30 == 90
    k = np.zeros((n30, 1, 133, 3), np.float32)
    k[:, 0, :, 0] = np.arange(n30, dtype=np.float32)[:, None]  # x of every point = its frame number
    k[:, 0, :, 2] = 0.9
    boxes = np.tile(np.array([10, 20, 110, 220], np.float32), (n30, 1))

    root = tmp_path / "out30"
    out = OutputDir(root)
    out.create()
    (root / "manifest.yaml").write_text((pipeline_output / "manifest.yaml").read_text())
    key = "clip30_000000000000_0000"
    buf = io.BytesIO()
    with wds.TarWriter(buf) as w:
        w.write({"__key__": key, "json": {"key": key, "fps": 30.0, "n_frames": n30},
                 "mp4": (tmp_path / "clip30.mp4").read_bytes(), "pose.npz": pose_npz.encode(k, boxes)})
    clips = pd.DataFrame([{"key": key, "source": "clip30.mp4", "source_id": "000000000000", "clip_index": 0,
                           "start_s": 0.0, "end_s": 3.0, "duration_s": 3.0, "status": "kept", "stage": None,
                           "reason": None, "message": None, "would_reject": None, "shard": "shard-000000.tar",
                           "width": 512, "height": 512, "fps": 30.0, "n_frames": n30, "face_px": 321.5}])
    sources = pd.DataFrame([{"source": "clip30.mp4", "status": "ok", "stage": None, "shards": "shard-000000.tar",
                             "probe_duration_s": 3.0}])
    out.commit(0, {"shard-000000.tar": buf.getvalue()}, clips, sources)

    dest = tmp_path / "tv"
    p = run_cli("export-talkverse", str(root), str(dest), "--absolute-paths")
    assert "1 re-encoded to 25 fps" in p.stdout
    meta = pd.read_csv(dest / "meta.csv")
    assert len(meta) == 1
    r = meta.iloc[0]
    assert Path(r["video_path"]).is_absolute() and Path(r["dwpose_path"]).is_absolute()
    info = ffprobe_video(Path(r["video_path"]))
    assert info["fps"] == 25.0 and info["acodec"] == "aac" and info["vcodec"] == "h264"
    assert info["frames"] == 75 == r["num_frames"]
    assert r["fps"] == 25 and talkverse_scenes(r["scenes"]) == [(0, 74)]
    assert r["face_px"] == 321.5
    kp = check_pose(Path(r["dwpose_path"]), 75)
    src_frame = kp[:, 0, 0, 0].astype(int)  # which 30 fps frame each 25 fps frame took
    assert (src_frame == np.minimum(np.round(np.arange(75) * 30 / 25).astype(int), n30 - 1)).all()


def test_export_refuses_what_has_no_clips(tmp_path):
    p = run_cli("export-talkverse", str(tmp_path / "nothing"), str(tmp_path / "dest"), check=False)
    assert p.returncode == 2 and "not an output directory" in p.stderr
    assert not (tmp_path / "dest" / "meta.csv").exists()
