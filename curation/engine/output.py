"""The output directory: shards committed atomically, audit parts as the commit record, exact resume.

Layout (a contract users rely on):
    DIR/shards/shard-NNNNNN.tar          WebDataset shards (mp4, wav, json, pose.npz per sample)
    DIR/index.parquet                    one row per kept clip
    DIR/audit/sources.parquet            one row per input file
    DIR/audit/clips.parquet              one row per candidate clip, kept or rejected, with every score
    DIR/audit/funnel.json                per stage: clips and seconds in/out, wall and CPU seconds
    DIR/audit/runs.jsonl                 one line per run (start, end, wall, sources)
    DIR/audit/parts/                     the commit log: clips-PPPPPP.parquet then sources-PPPPPP.parquet
    DIR/manifest.yaml                    the manifest the directory was made with

A commit writes its shards and its clips part under temporary names, renames the shards, then the clips
part, then the sources part last: a sources part on disk is the commit point. Recovery deletes temporary
files, clips parts without their sources part, and shards no committed part names. So a run killed at any
moment and started again ends with exactly the clips of an uninterrupted run, none twice."""

from __future__ import annotations

import io
import json
import os
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from curation.engine.record import KEPT, REJECTED, ClipRecord

PART_RE = re.compile(r"^(clips|sources)-(\d{6})\.parquet$")
SHARD_RE = re.compile(r"^shard-(\d{6})\.tar$")


def _fsync_write(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _parquet_bytes(df: pd.DataFrame) -> bytes:
    buf = io.BytesIO()
    df.to_parquet(buf, index=False)
    return buf.getvalue()


class OutputDir:
    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self.shards = self.root / "shards"
        self.audit = self.root / "audit"
        self.parts = self.audit / "parts"

    def create(self) -> None:
        for d in (self.shards, self.parts):
            d.mkdir(parents=True, exist_ok=True)

    # -- recovery ----------------------------------------------------------------------------------
    def committed_parts(self) -> list[int]:
        return sorted(int(m.group(2)) for p in self.parts.glob("sources-*.parquet")
                      if (m := PART_RE.match(p.name)))

    def recover(self) -> dict:
        """Bring the directory back to its last commit; return what was removed."""
        removed = defaultdict(list)
        committed = set(self.committed_parts())
        for d in (self.shards, self.parts, self.audit, self.root):
            if d.is_dir():
                for p in d.glob("*.tmp"):
                    p.unlink()
                    removed["tmp"].append(p.name)
        for p in self.parts.glob("clips-*.parquet"):
            m = PART_RE.match(p.name)
            if m and int(m.group(2)) not in committed:
                p.unlink()
                removed["uncommitted_parts"].append(p.name)
        named = self.committed_shard_names()
        for p in self.shards.glob("shard-*.tar"):
            if p.name not in named:
                p.unlink()
                removed["orphan_shards"].append(p.name)
        return dict(removed)

    def committed_shard_names(self) -> set[str]:
        names: set[str] = set()
        for part in self.committed_parts():
            df = pd.read_parquet(self.parts / f"sources-{part:06d}.parquet", columns=["shards"])
            for s in df["shards"].dropna():
                names.update(x for x in str(s).split(",") if x)
        return names

    def finished_sources(self) -> set[str]:
        done: set[str] = set()
        for part in self.committed_parts():
            df = pd.read_parquet(self.parts / f"sources-{part:06d}.parquet", columns=["source"])
            done.update(df["source"].tolist())
        return done

    def next_numbers(self) -> tuple[int, int]:
        parts = self.committed_parts()
        shards = [int(m.group(1)) for p in self.shards.glob("shard-*.tar") if (m := SHARD_RE.match(p.name))]
        return (max(parts) + 1 if parts else 0), (max(shards) + 1 if shards else 0)

    # -- commit ------------------------------------------------------------------------------------
    def commit(self, part: int, shard_files: dict[str, bytes], clips: pd.DataFrame, sources: pd.DataFrame) -> None:
        tmp_shards = []
        for name, data in shard_files.items():
            tmp = self.shards / (name + ".tmp")
            _fsync_write(tmp, data)
            tmp_shards.append((tmp, self.shards / name))
        clips_tmp = self.parts / f"clips-{part:06d}.parquet.tmp"
        sources_tmp = self.parts / f"sources-{part:06d}.parquet.tmp"
        _fsync_write(clips_tmp, _parquet_bytes(clips))
        _fsync_write(sources_tmp, _parquet_bytes(sources))
        for tmp, final in tmp_shards:
            os.replace(tmp, final)
        _fsync_dir(self.shards)
        os.replace(clips_tmp, self.parts / f"clips-{part:06d}.parquet")
        os.replace(sources_tmp, self.parts / f"sources-{part:06d}.parquet")  # the commit point
        _fsync_dir(self.parts)

    # -- reading back ------------------------------------------------------------------------------
    def read_parts(self, kind: str) -> pd.DataFrame:
        frames = [pd.read_parquet(self.parts / f"{kind}-{p:06d}.parquet") for p in self.committed_parts()]
        frames = [f for f in frames if len(f)]
        return pd.concat(frames, ignore_index=True, sort=False) if frames else pd.DataFrame()

    def write_atomic(self, path: Path, data: bytes) -> None:
        tmp = path.with_name(path.name + ".tmp")
        _fsync_write(tmp, data)
        os.replace(tmp, path)


# ---------------------------------------------------------------------------------------------------
# Records → audit rows and shard samples

def sample_json(rec: ClipRecord, manifest_name: str, fps: float, audio_rate: int) -> dict:
    return {
        "key": rec.key, "source": rec.source, "audio_source": rec.audio_path or rec.source,
        "start_s": rec.start_s, "end_s": rec.end_s, "duration_s": rec.duration_s,
        "n_frames": rec.data.get("n_frames"), "fps": fps, "audio_rate": audio_rate,
        "width": rec.probe.get("width"), "height": rec.probe.get("height"),
        "audio_shift_frames": rec.data.get("audio_shift_frames", 0),
        "scores": {**rec.scores, **rec.labels}, "manifest": manifest_name,
    }


def clip_row(rec: ClipRecord, shard: str | None, fps: float) -> dict:
    row = {
        "key": rec.key, "source": rec.source, "source_id": rec.source_id, "clip_index": rec.clip_index,
        "start_s": rec.start_s, "end_s": rec.end_s, "duration_s": rec.duration_s if rec.start_s is not None else None,
        "status": rec.status, "stage": rec.stage, "reason": rec.reason, "message": rec.message,
        "would_reject": ";".join(rec.would_reject) or None, "shard": shard,
        "width": rec.probe.get("width"), "height": rec.probe.get("height"), "fps": fps,
        "source_fps": rec.probe.get("fps"), "n_frames": rec.data.get("n_frames"), "audio_shift_frames": rec.data.get("audio_shift_frames"),
    }
    for k, v in (*rec.scores.items(), *rec.labels.items()):
        row[k] = v
    for stage, (wall, cpu) in rec.timings.items():
        row[f"wall_s__{stage}"] = wall
        row[f"cpu_s__{stage}"] = cpu
    return row


PROBE_FIELDS = ("duration_s", "fps", "width", "height", "rotation", "vcodec", "acodec", "audio_rate",
                "audio_channels", "n_frames", "has_video", "has_audio")


def source_row(recs: list[ClipRecord], shards: list[str]) -> dict:
    first = recs[0]
    src_level = [r for r in recs if r.is_source]
    rejected = src_level[0] if src_level and src_level[0].status == REJECTED else None
    kept = [r for r in recs if r.status == KEPT]
    row = {
        "source": first.source, "source_id": first.source_id, "audio_path": first.audio_path,
        "status": "rejected" if rejected else "ok",
        "stage": rejected.stage if rejected else None, "reason": rejected.reason if rejected else None,
        "message": rejected.message if rejected else None,
        "n_candidates": 0 if rejected else len(recs), "n_kept": len(kept),
        "kept_s": float(sum(r.duration_s for r in kept)), "shards": ",".join(sorted(set(shards))) or None,
    }
    for f in PROBE_FIELDS:
        row[f"probe_{f}"] = first.probe.get(f)
    return row


@dataclass
class Committer:
    """Collects finished records on the driver; a source is complete when all its candidate clips are in.
    Complete sources are committed together: shards for their kept clips, then their audit rows."""

    out: OutputDir
    manifest_name: str
    fps: float
    audio_rate: int
    shard_max_samples: int
    shard_max_bytes: int
    commit_every_sources: int
    write_shards: bool = True
    _open: dict[str, list[ClipRecord]] = field(default_factory=dict)
    _ready: list[list[ClipRecord]] = field(default_factory=list)
    committed_sources: int = 0
    committed_clips: int = 0

    def __post_init__(self):
        self.part, self.shard_no = self.out.next_numbers()

    def add(self, rec: ClipRecord) -> None:
        recs = self._open.setdefault(rec.source, [])
        recs.append(rec)
        if len(recs) >= recs[0].n_siblings or rec.is_source:
            self._ready.append(sorted(self._open.pop(rec.source), key=lambda r: (r.clip_index is not None, r.clip_index or 0)))
            if self._should_commit():
                self.commit()

    def is_complete(self, source: str) -> bool:
        """No record of `source` is waiting for its siblings (true also for a source never added)."""
        return source not in self._open

    def discard(self, sources: list[str]) -> list[ClipRecord]:
        """Forget the records received so far of incomplete `sources` (they are to be processed again)."""
        out: list[ClipRecord] = []
        for s in sources:
            out.extend(self._open.pop(s, []))
        return out

    def _should_commit(self) -> bool:
        kept = [r for g in self._ready for r in g if r.status != REJECTED]
        return (len(self._ready) >= self.commit_every_sources or len(kept) >= self.shard_max_samples
                or sum(len(b) for r in kept for b in r.blobs.values()) >= self.shard_max_bytes)

    def _pack(self, recs: list[ClipRecord]) -> dict[str, tuple[bytes, list[str]]]:
        """Pack kept records into tar files of at most shard_max_samples / shard_max_bytes."""
        import webdataset as wds

        shards: dict[str, tuple[bytes, list[str]]] = {}
        group: list[ClipRecord] = []
        size = 0

        def flush():
            nonlocal group, size
            if not group:
                return
            name = f"shard-{self.shard_no:06d}.tar"
            self.shard_no += 1
            buf = io.BytesIO()
            with wds.TarWriter(buf) as w:
                for r in group:
                    sample = {"__key__": r.key, "json": sample_json(r, self.manifest_name, self.fps, self.audio_rate)}
                    sample.update(r.blobs)
                    w.write(sample)
            shards[name] = (buf.getvalue(), [r.key for r in group])
            group, size = [], 0

        for r in recs:
            rsize = sum(len(b) for b in r.blobs.values())
            if group and (len(group) >= self.shard_max_samples or size + rsize > self.shard_max_bytes):
                flush()
            group.append(r)
            size += rsize
        flush()
        return shards

    def commit(self) -> None:
        if not self._ready:
            return
        groups, self._ready = self._ready, []
        kept = []
        for g in groups:
            for r in g:
                if r.status != REJECTED and not r.is_source:
                    r.status = KEPT
                    if self.write_shards:
                        kept.append(r)
        packed = self._pack(kept) if kept else {}
        shard_of = {k: name for name, (_, keys) in packed.items() for k in keys}
        clips = pd.DataFrame([clip_row(r, shard_of.get(r.key), self.fps) for g in groups for r in g])
        clips["clip_index"] = clips["clip_index"].astype("Int64")  # null: a source-level row
        sources = pd.DataFrame([source_row(g, [shard_of[r.key] for r in g if r.key in shard_of]) for g in groups])
        self.out.commit(self.part, {n: b for n, (b, _) in packed.items()}, clips, sources)
        self.part += 1
        self.committed_sources += len(groups)
        self.committed_clips += len(kept)
        for g in groups:  # free the encoded bytes
            for r in g:
                r.blobs.clear()

    def close(self) -> None:
        if self._open:  # records of a source that never completed (should not happen): commit what we have
            for recs in self._open.values():
                self._ready.append(recs)
            self._open.clear()
        self.commit()
