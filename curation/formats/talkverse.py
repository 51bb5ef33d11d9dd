"""`curation export-talkverse DIR DEST`: the kept clips in the layout TalkVerse's loaders read
(snap-research/TalkVerse wan/src/dataset_resolution_bins.py and dataset_resolution_bins_roi.py):

    DEST/videos/<key>.mp4    25 fps H.264 with AAC audio (the loader asserts 25 fps and needs an audio stream)
    DEST/dwpose/<key>.npz    keypoints_info (T, 1, 133, 3), person_bbox_xyxy (T, 4) (where the run had a
                             skeleton stage; the roi loader reads exactly these two arrays)
    DEST/meta.csv            video_path (relative to DEST: the loader joins it to `base_path`, and takes the
                             video id from its file name), fps, scenes ("start,end;..." inclusive frame
                             indices at `fps`; one scene per clip, since our clips are cut at shot boundaries),
                             then dwpose_path, num_frames, key, source, span, size and every score column.

The shards are read as streams, one sample at a time; each file is copied out of the tar byte for byte (a
shard member cannot be hard-linked). Only a clip written at another rate than 25 fps (a manifest with
video.fps != 25) is re-encoded to 25 fps, and its skeleton resampled to the new frame count. Only committed
parts are read, so exporting a run in progress exports what it has committed."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pandas as pd

from curation.engine.audit import score_columns
from curation.engine.output import OutputDir
from curation.media.ffmpeg import FFMPEG, FFPROBE

TARGET_FPS = 25.0
META_FIRST = ["video_path", "fps", "scenes", "dwpose_path", "num_frames", "key", "source", "start_s", "end_s",
              "duration_s", "width", "height", "audio_shift_frames"]
POSE_KEYS = ("keypoints_info", "person_bbox_xyxy")


class ExportError(RuntimeError):
    """The export cannot be made; the message says why."""


def _copy_member(f, dest: Path) -> Path:
    tmp = dest.with_name(dest.name + ".tmp")
    with open(tmp, "wb") as out:
        shutil.copyfileobj(f, out, 1 << 20)
    return tmp


def _probe_stream(path: Path) -> dict:
    p = subprocess.run([FFPROBE, "-v", "error", "-select_streams", "v:0", "-show_entries",
                        "stream=avg_frame_rate,r_frame_rate,nb_frames", "-of", "json", str(path)],
                       capture_output=True, text=True, timeout=120)
    if p.returncode != 0:
        raise ExportError(f"{path.name}: ffprobe failed: {p.stderr.strip()[:500]}")
    streams = json.loads(p.stdout or "{}").get("streams") or [{}]
    return streams[0]


def _rate(s: str | None) -> float:
    if not s or s in ("0/0", "N/A"):
        return 0.0
    n, _, d = s.partition("/")
    return float(n) / float(d or 1) if float(d or 1) else 0.0


def _reencode_25(src: Path, dest: Path) -> None:
    tmp = dest.with_name(dest.name + ".enc.tmp.mp4")
    cmd = [FFMPEG, "-nostdin", "-v", "error", "-y", "-i", str(src), "-map", "0:v:0", "-map", "0:a:0?",
           "-vf", f"fps={TARGET_FPS:g}", "-c:v", "libx264", "-preset", "veryfast", "-crf", "18",
           "-pix_fmt", "yuv420p", "-c:a", "copy", "-movflags", "+faststart", str(tmp)]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=3600)
    if p.returncode != 0:
        tmp.unlink(missing_ok=True)
        raise ExportError(f"{src.name}: re-encoding to {TARGET_FPS:g} fps failed: {p.stderr.strip()[:500]}")
    os.replace(tmp, dest)


def _check_pose(data: dict[str, np.ndarray]) -> int:
    k, b = data.get("keypoints_info"), data.get("person_bbox_xyxy")
    if k is None or b is None:
        raise ValueError(f"needs arrays {POSE_KEYS}, has {sorted(data)}")
    if k.ndim != 4 or k.shape[1:] != (1, 133, 3):
        raise ValueError(f"keypoints_info is {k.shape}, expected (T, 1, 133, 3)")
    if b.shape != (k.shape[0], 4):
        raise ValueError(f"person_bbox_xyxy is {b.shape}, expected ({k.shape[0]}, 4)")
    return int(k.shape[0])


class _Sample:
    def __init__(self, key: str):
        self.key = key
        self.meta: dict = {}
        self.mp4_tmp: Path | None = None
        self.pose_tmp: Path | None = None


class Exporter:
    def __init__(self, root: str | os.PathLike, dest: str | os.PathLike, absolute_paths: bool = False,
                 log=print):
        self.out = OutputDir(root)
        self.dest = Path(dest)
        self.absolute = absolute_paths
        self.log = log
        self.videos = self.dest / "videos"
        self.dwpose = self.dest / "dwpose"
        self.rows: list[dict] = []
        self.stats = {"clips": 0, "copied": 0, "reencoded": 0, "pose": 0, "no_pose": 0, "bad_pose": 0}

    # -- which clips ---------------------------------------------------------------------------------
    def kept_clips(self) -> pd.DataFrame:
        if not self.out.parts.is_dir():
            raise ExportError(f"{self.out.root} is not an output directory of `curation run` (no audit/parts)")
        clips = self.out.read_parts("clips")
        if clips.empty:
            raise ExportError(f"{self.out.root}: no committed clips yet")
        kept = clips[(clips["status"] == "kept") & clips["shard"].notna()]
        if kept.empty:
            raise ExportError(f"{self.out.root}: no kept clip in a shard (a --score-only run writes no shards)")
        return kept.set_index("key", drop=False)

    # -- one shard, streamed -------------------------------------------------------------------------
    def _finish(self, s: _Sample | None, row: pd.Series | None, scores: list[str]) -> None:
        if s is None:
            return
        if s.mp4_tmp is None:
            if s.pose_tmp:
                s.pose_tmp.unlink(missing_ok=True)
            raise ExportError(f"sample {s.key} has no mp4 in its shard")
        fps = float(s.meta.get("fps") or 0.0)
        n = s.meta.get("n_frames")
        if not fps or not n:
            st = _probe_stream(s.mp4_tmp)
            fps = fps or _rate(st.get("avg_frame_rate")) or _rate(st.get("r_frame_rate"))
            n = n or (int(st["nb_frames"]) if str(st.get("nb_frames", "")).isdigit() else None)
        video = self.videos / f"{s.key}.mp4"
        if abs(fps - TARGET_FPS) < 1e-3:
            os.replace(s.mp4_tmp, video)  # the shard's bytes, untouched
            self.stats["copied"] += 1
            n_out = int(n) if n else int(_probe_stream(video).get("nb_frames") or 0)
        else:
            _reencode_25(s.mp4_tmp, video)
            s.mp4_tmp.unlink(missing_ok=True)
            self.stats["reencoded"] += 1
            st = _probe_stream(video)
            n_out = int(st["nb_frames"]) if str(st.get("nb_frames", "")).isdigit() else int(
                round(float(n or 0) * TARGET_FPS / fps))
        dw = ""
        if s.pose_tmp is not None:
            npz = self.dwpose / f"{s.key}.npz"
            try:
                with np.load(s.pose_tmp, allow_pickle=False) as z:
                    data = {k: z[k] for k in z.files}
                t = _check_pose(data)
                if abs(fps - TARGET_FPS) < 1e-3:
                    os.replace(s.pose_tmp, npz)
                else:  # nearest source frame for every 25 fps frame
                    idx = np.minimum(np.round(np.arange(n_out) * fps / TARGET_FPS).astype(int), t - 1)
                    tmp = npz.with_name(npz.name + ".tmp")
                    with open(tmp, "wb") as f:
                        np.savez_compressed(f, keypoints_info=data["keypoints_info"][idx],
                                            person_bbox_xyxy=data["person_bbox_xyxy"][idx])
                    os.replace(tmp, npz)
                    s.pose_tmp.unlink(missing_ok=True)
                dw = self._path(npz)
                self.stats["pose"] += 1
            except (ValueError, OSError, KeyError) as e:
                s.pose_tmp.unlink(missing_ok=True)
                self.stats["bad_pose"] += 1
                self.log(f"warning: {s.key}: pose.npz not exported: {e}", file=sys.stderr)
        else:
            self.stats["no_pose"] += 1
        r = {"video_path": self._path(video), "fps": int(TARGET_FPS), "scenes": f"0,{max(0, n_out - 1)}",
             "dwpose_path": dw, "num_frames": n_out}
        for c in META_FIRST[5:]:
            if row is not None and c in row.index:
                r[c] = row[c]
        for c in scores:
            if row is not None and c not in r:
                r[c] = row[c]
        self.rows.append(r)
        self.stats["clips"] += 1

    def _path(self, p: Path) -> str:
        return str(p.resolve()) if self.absolute else p.relative_to(self.dest).as_posix()

    def export_shard(self, shard: Path, wanted: pd.DataFrame, scores: list[str]) -> None:
        cur: _Sample | None = None
        seen: set[str] = set()
        with tarfile.open(shard, mode="r|*") as tf:  # a stream: members in order, one at a time
            for m in tf:
                if not m.isfile():
                    continue
                base = m.name.rsplit("/", 1)[-1]
                key, _, ext = base.partition(".")
                if key not in wanted.index:
                    continue
                if cur is None or key != cur.key:
                    self._finish(cur, wanted.loc[cur.key] if cur else None, scores)
                    if key in seen:
                        raise ExportError(f"{shard.name}: sample {key} is split in the tar")
                    cur = _Sample(key)
                    seen.add(key)
                f = tf.extractfile(m)
                if ext == "json":
                    cur.meta = json.loads(f.read().decode("utf-8"))
                elif ext == "mp4":
                    cur.mp4_tmp = _copy_member(f, self.videos / f"{key}.mp4")
                elif ext == "pose.npz":
                    cur.pose_tmp = _copy_member(f, self.dwpose / f"{key}.npz")
            self._finish(cur, wanted.loc[cur.key] if cur else None, scores)
        missing = set(wanted.index) - seen
        if missing:
            raise ExportError(f"{shard.name}: {len(missing)} kept clip(s) not in the shard, e.g. {sorted(missing)[0]}")

    def run(self) -> dict:
        kept = self.kept_clips()
        scores = score_columns(kept)
        self.videos.mkdir(parents=True, exist_ok=True)
        self.dwpose.mkdir(parents=True, exist_ok=True)
        for shard_name in sorted(kept["shard"].unique()):
            shard = self.out.shards / shard_name
            if not shard.is_file():
                raise ExportError(f"shard {shard} is named by a committed part but missing")
            self.export_shard(shard, kept[kept["shard"] == shard_name], scores)
        meta = pd.DataFrame(sorted(self.rows, key=lambda r: r["video_path"]))
        meta = meta[[c for c in META_FIRST if c in meta] + [c for c in meta.columns if c not in META_FIRST]]
        tmp = self.dest / "meta.csv.tmp"
        meta.to_csv(tmp, index=False)
        os.replace(tmp, self.dest / "meta.csv")
        return {**self.stats, "meta": str(self.dest / "meta.csv")}


def export_talkverse(root: str | os.PathLike, dest: str | os.PathLike, absolute_paths: bool = False,
                     log=print) -> dict:
    """Export the kept clips of output directory `root` to `dest`; return counts."""
    return Exporter(root, dest, absolute_paths, log).run()


def cmd_export(a) -> int:
    try:
        res = export_talkverse(a.dir, a.dest, absolute_paths=a.absolute_paths)
    except (ExportError, FileNotFoundError) as e:
        print(f"curation: error: {e}", file=sys.stderr)
        return 2
    print(f"exported {res['clips']} clips to {a.dest}: {res['copied']} copied as they are (25 fps), "
          f"{res['reencoded']} re-encoded to 25 fps; {res['pose']} skeletons in dwpose/"
          + (f", {res['no_pose']} clips without pose.npz (no skeleton stage in the run)" if res["no_pose"] else "")
          + (f", {res['bad_pose']} unreadable pose.npz skipped" if res["bad_pose"] else ""))
    print(f"meta:    {res['meta']}  (TalkVerse: metadata_path=meta.csv, base_path={a.dest})")
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser("export-talkverse", help="export the kept clips in TalkVerse's dataset layout",
                       description="Write DEST/videos/<key>.mp4 (25 fps with audio), DEST/dwpose/<key>.npz "
                                   "(keypoints_info, person_bbox_xyxy) and DEST/meta.csv (video_path, fps, "
                                   "scenes, and every score) from an output directory of `curation run`. "
                                   "Files are copied out of the shards; nothing at 25 fps is re-encoded.")
    p.add_argument("dir", metavar="DIR", help="an output directory of `curation run`")
    p.add_argument("dest", metavar="DEST", help="the export directory (created)")
    p.add_argument("--absolute-paths", action="store_true",
                   help="write absolute video_path/dwpose_path in meta.csv (default: relative to DEST)")
    p.set_defaults(func=cmd_export)
