"""The output location: shards written by the workers, audit parts as the commit record, exact resume.

Layout (a contract users rely on):
    DIR/shards/shard-<attempt>.tar       WebDataset shards (mp4, wav, json, pose.npz per sample)
    DIR/index.parquet                    one row per kept clip
    DIR/audit/sources.parquet            one row per input file
    DIR/audit/clips.parquet              one row per candidate clip, kept or rejected, with every score
    DIR/audit/funnel.json                per stage: clips and seconds in/out, wall and CPU seconds
    DIR/audit/runs.jsonl                 one line per run (start, end, wall, sources)
    DIR/audit/parts/                     the commit log: clips-PPPPPP.parquet then sources-PPPPPP.parquet
    DIR/manifest.yaml                    the manifest the directory was made with

DIR is a local path, a shared file system, or an object store through pyarrow.fs (s3://, gs://). The Ray
workers pack the clips into tar shards and write them straight to DIR/shards under a name unique to the
attempt (a retried task never writes over the first try's file); the driver receives only metadata. A commit
then writes a clips part and, last, a sources part: a sources part in the store is the commit point.
Recovery deletes temporary files, clips parts without their sources part, and every shard that no committed
part names. No step relies on renaming: on a local file system a file is written under a temporary name and
renamed (atomic there); on an object store a PUT makes the whole object appear at once or not at all. So a
run killed at any moment and started again ends with exactly the clips of an uninterrupted run, none twice."""

from __future__ import annotations

import io
import json
import os
import re
import sys
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from curation.engine.pathnames import original_column, text_row
from curation.engine.record import KEPT, REJECTED, ClipRecord

PART_RE = re.compile(r"^(clips|sources)-(\d{6})\.parquet$")
SHARD_RE = re.compile(r"^shard-([0-9A-Za-z]+)\.tar$")


def is_remote(uri: str | os.PathLike) -> bool:
    """A pyarrow.fs URI other than a local path or file:// (s3://, gs://, hdfs://...)."""
    s = str(uri)
    return "://" in s and not s.startswith("file://")


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


class Store:
    """A directory on the local file system or on a pyarrow.fs file system, addressed by paths relative to it.
    Picklable (a Ray worker gets the URI and opens the file system itself)."""

    def __init__(self, uri: str | os.PathLike):
        s = str(uri)
        self.remote = is_remote(s)
        if self.remote:
            self.uri = s.rstrip("/")
            self.base = ""
        else:
            self.base = os.path.abspath(s[len("file://"):] if s.startswith("file://") else s)
            self.uri = self.base
        self._fs = None

    def __getstate__(self):
        return {"uri": self.uri, "remote": self.remote, "base": self.base}

    def __setstate__(self, st):
        self.__dict__.update(st, _fs=None)

    @property
    def fs(self):
        if self._fs is None:
            from pyarrow import fs

            self._fs, self.base = fs.FileSystem.from_uri(self.uri)
            self.base = self.base.rstrip("/")
        return self._fs

    def _p(self, rel: str) -> str:
        if not self.remote:
            return os.path.join(self.base, rel)
        fs = self.fs  # sets base
        return f"{self.base}/{rel}" if rel else self.base

    def local_path(self, rel: str = "") -> Path:
        assert not self.remote
        return Path(self._p(rel))

    def makedirs(self, rel: str) -> None:
        if self.remote:
            self.fs.create_dir(self._p(rel), recursive=True)  # a no-op on stores without directories
        else:
            os.makedirs(self._p(rel), exist_ok=True)

    def write(self, rel: str, data: bytes) -> None:
        """The whole file or nothing: a temporary name and a rename locally, one PUT on an object store."""
        if self.remote:
            with self.fs.open_output_stream(self._p(rel)) as f:
                f.write(data)
            return
        path = Path(self._p(rel))
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        _fsync_write(tmp, data)
        os.replace(tmp, path)
        _fsync_dir(path.parent)

    def read(self, rel: str) -> bytes:
        if self.remote:
            with self.fs.open_input_stream(self._p(rel)) as f:
                return f.read()
        return Path(self._p(rel)).read_bytes()

    def exists(self, rel: str) -> bool:
        if self.remote:
            from pyarrow import fs

            return self.fs.get_file_info(self._p(rel)).type != fs.FileType.NotFound
        return os.path.exists(self._p(rel))

    def list(self, rel: str) -> list[str]:
        """Names of the files directly in directory `rel` (none if it does not exist)."""
        return self._entries(rel, dirs=False)

    def list_dirs(self, rel: str) -> list[str]:
        """Names of the directories directly in `rel` (object stores: the common prefixes)."""
        return self._entries(rel, dirs=True)

    def _entries(self, rel: str, dirs: bool) -> list[str]:
        if self.remote:
            from pyarrow import fs

            kind = fs.FileType.Directory if dirs else fs.FileType.File
            sel = fs.FileSelector(self._p(rel), allow_not_found=True, recursive=False)
            return sorted(i.base_name for i in self.fs.get_file_info(sel) if i.type == kind)
        try:
            return sorted(e.name for e in os.scandir(self._p(rel)) if (e.is_dir() if dirs else e.is_file()))
        except FileNotFoundError:
            return []

    def size(self, rel: str) -> int:
        if self.remote:
            return int(self.fs.get_file_info(self._p(rel)).size)
        return os.path.getsize(self._p(rel))

    def delete(self, rel: str) -> None:
        if self.remote:
            self.fs.delete_file(self._p(rel))
        else:
            os.unlink(self._p(rel))

    def append_line(self, rel: str, line: str) -> None:
        """One line appended to a small log (runs.jsonl). An object store has no append: read and rewrite."""
        if self.remote:
            old = self.read(rel) if self.exists(rel) else b""
            self.write(rel, old + line.encode() + b"\n")
        else:
            with open(self._p(rel), "a", encoding="utf-8") as f:
                f.write(line + "\n")

    def read_parquet(self, rel: str, columns: list[str] | None = None) -> pd.DataFrame:
        if self.remote:
            return pd.read_parquet(io.BytesIO(self.read(rel)), columns=columns)
        return pd.read_parquet(self._p(rel), columns=columns)


def new_shard_name() -> str:
    """A shard name unique to one attempt of one task (a retry never writes over the first try's file)."""
    return f"shard-{uuid.uuid4().hex[:20]}.tar"


def pack_tar(samples: list[tuple[str, dict, dict[str, bytes]]]) -> bytes:
    """(key, sample json, {extension: bytes}) -> the bytes of a WebDataset tar."""
    import webdataset as wds

    buf = io.BytesIO()
    with wds.TarWriter(buf) as w:
        for key, meta, blobs in samples:
            sample = {"__key__": key, "json": meta}
            sample.update(blobs)
            w.write(sample)
    return buf.getvalue()


class OutputDir:
    """The output location (local path or URI). `root`, `shards`, `audit`, `parts` are local Paths when the
    output is local (callers that only handle local outputs use them); all I/O here goes through `store`."""

    def __init__(self, root: str | os.PathLike):
        self.store = Store(root)
        self.remote = self.store.remote
        self.uri = self.store.uri
        self.root = Path(self.store.base) if not self.remote else Path(self.uri.split("://", 1)[1])
        self.shards = self.root / "shards"
        self.audit = self.root / "audit"
        self.parts = self.audit / "parts"

    def create(self) -> None:
        for d in ("shards", "audit/parts"):
            self.store.makedirs(d)

    # -- recovery ----------------------------------------------------------------------------------
    def committed_parts(self) -> list[int]:
        return sorted(int(m.group(2)) for n in self.store.list("audit/parts")
                      if (m := PART_RE.match(n)) and m.group(1) == "sources")

    def recover(self) -> dict:
        """Bring the directory back to its last commit; return what was removed."""
        removed = defaultdict(list)
        committed = set(self.committed_parts())
        for d in ("shards", *[f"shards/{x}" for x in self.store.list_dirs("shards")], "audit/parts", "audit", ""):
            for n in self.store.list(d):
                if n.endswith(".tmp"):
                    self.store.delete(f"{d}/{n}" if d else n)
                    removed["tmp"].append(n)
        for n in self.store.list("audit/parts"):
            m = PART_RE.match(n)
            if m and m.group(1) == "clips" and int(m.group(2)) not in committed:
                self.store.delete(f"audit/parts/{n}")
                removed["uncommitted_parts"].append(n)
        removed_shards = self.delete_orphan_shards()
        if removed_shards:
            removed["orphan_shards"] = removed_shards
        return dict(removed)

    def delete_orphan_shards(self) -> list[str]:
        """Every shard that no committed part names goes (a killed run's, a retried task's first try)."""
        named = self.committed_shard_names()
        gone = []
        # shards/ and, for a selection with tiers, shards/<tier>/
        for d in ["", *self.store.list_dirs("shards")]:
            for n in self.store.list(f"shards/{d}" if d else "shards"):
                rel = f"{d}/{n}" if d else n
                if SHARD_RE.match(n) and rel not in named:
                    self.store.delete(f"shards/{rel}")
                    gone.append(rel)
        return gone

    def committed_shard_names(self) -> set[str]:
        names: set[str] = set()
        for part in self.committed_parts():
            df = self.store.read_parquet(f"audit/parts/sources-{part:06d}.parquet", columns=["shards"])
            for s in df["shards"].dropna():
                names.update(x for x in str(s).split(",") if x)
        return names

    def finished_sources(self) -> set[str]:
        done: set[str] = set()
        for part in self.committed_parts():
            df = self.store.read_parquet(f"audit/parts/sources-{part:06d}.parquet")
            done.update(original_column(df, "source"))  # the name as listed, also when it is not UTF-8
        return done

    def next_part(self) -> int:
        parts = self.committed_parts()
        return max(parts) + 1 if parts else 0

    # -- commit ------------------------------------------------------------------------------------
    def write_shard(self, name: str, data: bytes) -> None:
        self.store.write(f"shards/{name}", data)

    def commit(self, part: int, shard_files: dict[str, bytes], clips: pd.DataFrame, sources: pd.DataFrame) -> None:
        """Shards packed here (if any; the workers write theirs before), then the clips part, then the sources
        part: the commit point."""
        for name, data in shard_files.items():
            self.write_shard(name, data)
        self.store.write(f"audit/parts/clips-{part:06d}.parquet", _parquet_bytes(clips))
        self.store.write(f"audit/parts/sources-{part:06d}.parquet", _parquet_bytes(sources))

    # -- reading back ------------------------------------------------------------------------------
    def read_parts(self, kind: str) -> pd.DataFrame:
        frames = [self.store.read_parquet(f"audit/parts/{kind}-{p:06d}.parquet") for p in self.committed_parts()]
        frames = [f for f in frames if len(f)]
        return pd.concat(frames, ignore_index=True, sort=False) if frames else pd.DataFrame()

    def rel(self, path: str | os.PathLike) -> str:
        """A path under root (as built from .root/.audit/...) relative to the output location."""
        return os.path.relpath(str(path), str(self.root)).replace(os.sep, "/")

    def write_atomic(self, path: str | os.PathLike, data: bytes) -> None:
        self.store.write(self.rel(path), data)

    def read_bytes(self, path: str | os.PathLike) -> bytes:
        return self.store.read(self.rel(path))

    def exists(self, path: str | os.PathLike) -> bool:
        return self.store.exists(self.rel(path))


def local_copy(uri: str, dest: str | os.PathLike, shards: bool = True) -> Path:
    """An output on an object store copied to a local directory (the commands that read an output --
    report, inspect, export-talkverse, train -- then read it as a local one). Only what is committed."""
    src = OutputDir(uri)
    dest = Path(dest)
    for d in ("", "audit", "audit/parts"):
        (dest / d).mkdir(parents=True, exist_ok=True)
        for n in src.store.list(d):
            if not n.endswith(".tmp"):
                (dest / d / n).write_bytes(src.store.read(f"{d}/{n}" if d else n))
    if shards:
        (dest / "shards").mkdir(exist_ok=True)
        for n in sorted(src.committed_shard_names()):
            (dest / "shards" / n).write_bytes(src.store.read(f"shards/{n}"))
    return dest


# ---------------------------------------------------------------------------------------------------
# Records → audit rows and shard samples

def sample_json(rec: ClipRecord, manifest_name: str, fps: float, audio_rate: int) -> dict:
    return {
        "key": rec.key, "source": rec.source, "audio_source": rec.audio_path or rec.source,
        "start_s": rec.start_s, "end_s": rec.end_s, "duration_s": rec.duration_s,
        "n_frames": rec.data.get("n_frames"), "fps": fps, "audio_rate": audio_rate,
        "width": rec.data.get("width", rec.probe.get("width")), "height": rec.data.get("height", rec.probe.get("height")),
        "audio_shift_frames": rec.data.get("audio_shift_frames", 0),
        "scores": {**rec.scores, **rec.labels}, "manifest": manifest_name,
    }


def record_data_json(rec: ClipRecord) -> str:
    """What the stages handed each other for this clip (face track, person box, audio shift) and its probe, as
    JSON: a score-only run keeps it in its audit so that `curation select` can write the clips it selects
    (the writing stages need it) without running the deciding stages again."""
    import numpy as np

    def plain(o):
        if isinstance(o, np.ndarray):
            return o.tolist()
        if isinstance(o, np.generic):
            return o.item()
        raise TypeError(f"{type(o).__name__} is not JSON")

    # face68: the sync stage's per-frame face points, a hand-off to the skeleton stage (which re-makes them
    # when they are missing), ~1 MB of JSON per 30 s clip: not worth keeping
    data = {k: v for k, v in rec.data.items() if k not in ("tracebacks", "face68")}
    return json.dumps({"data": data, "probe": rec.probe}, default=plain)


def clip_row(rec: ClipRecord, shard: str | None, fps: float, keep_data: bool = False) -> dict:
    row = {
        "key": rec.key, "source": rec.source, "source_id": rec.source_id, "clip_index": rec.clip_index,
        "start_s": rec.start_s, "end_s": rec.end_s, "duration_s": rec.duration_s if rec.start_s is not None else None,
        "status": rec.status, "stage": rec.stage, "reason": rec.reason, "message": rec.message,
        "would_reject": ";".join(rec.would_reject) or None, "shard": shard,
        "width": rec.data.get("width", rec.probe.get("width")), "height": rec.data.get("height", rec.probe.get("height")),
        "fps": fps, "source_fps": rec.probe.get("fps"), "n_frames": rec.data.get("n_frames"),
        # a written clip says 0 in its json when the audio was not shifted: the same here
        "audio_shift_frames": rec.data.get("audio_shift_frames", 0 if shard else None),
    }
    for k, v in (*rec.scores.items(), *rec.labels.items()):
        row[k] = v
    for stage, (wall, cpu) in rec.timings.items():
        row[f"wall_s__{stage}"] = wall
        row[f"cpu_s__{stage}"] = cpu
    for stage, (node, worker) in rec.where.items():
        row[f"node__{stage}"] = node
        row[f"worker__{stage}"] = worker
    if keep_data and not rec.is_source:
        row["record_data"] = record_data_json(rec)
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


# ---------------------------------------------------------------------------------------------------
# On the workers: kept clips packed into shards written straight to the output location

# What of a record's `data` the driver still needs once its clip is in a shard (clip_row reads these).
DRIVER_DATA = ("n_frames", "width", "height", "audio_shift_frames", "shard", "shard_bytes", "shard_sources")


def pack_and_write(recs: list[ClipRecord], store: Store, manifest_name: str, fps: float, audio_rate: int,
                   shard_max_samples: int, shard_max_bytes: int) -> list[ClipRecord]:
    """Kept clips of `recs` packed into tar shards (at most shard_max_samples / shard_max_bytes each) and
    written to `store`/shards under names unique to this attempt; every record leaves with its encoded bytes
    and the stages' working arrays dropped, a kept clip naming its shard, the shard's size and the sources
    the shard holds clips of (the committer commits those sources together)."""
    kept = [r for r in recs if r.status != REJECTED and not r.is_source and r.blobs]
    groups: list[list[ClipRecord]] = []
    size = 0
    # a clip with a tier (`curation select --tiers`) goes to shards/<tier>/, one group per tier
    for r in sorted(kept, key=lambda r: r.labels.get("tier") or ""):
        rsize = sum(len(b) for b in r.blobs.values())
        if (not groups or len(groups[-1]) >= shard_max_samples or size + rsize > shard_max_bytes
                or groups[-1][0].labels.get("tier") != r.labels.get("tier")):
            groups.append([])
            size = 0
        groups[-1].append(r)
        size += rsize
    for g in groups:
        tier = g[0].labels.get("tier")
        name = f"{tier}/{new_shard_name()}" if tier else new_shard_name()
        data = pack_tar([(r.key, sample_json(r, manifest_name, fps, audio_rate), r.blobs) for r in g])
        store.write(f"shards/{name}", data)
        srcs = sorted({r.source for r in g})
        for r in g:
            r.data.update(shard=name, shard_bytes=len(data), shard_sources=srcs)
    for r in recs:
        r.blobs = {}
        r.data = {k: v for k, v in r.data.items() if k in DRIVER_DATA}
    return recs


@dataclass
class Committer:
    """Collects finished records on the driver; a source is complete when all its candidate clips are in.

    Records come either with their clips already in shards the workers wrote (`data["shard"]`), or (a plain
    call without Ray) with the encoded bytes, which the committer packs itself. A worker's shard may hold clips
    of several sources: sources are committed together with every other source sharing a shard with them, once
    all of those are complete, so that a committed shard never holds a clip of an uncommitted source."""

    out: OutputDir
    manifest_name: str
    fps: float
    audio_rate: int
    shard_max_samples: int
    shard_max_bytes: int
    commit_every_sources: int
    write_shards: bool = True
    keep_data: bool = False  # a score-only run: the clips' working data into the audit (record_data)
    _open: dict[str, list[ClipRecord]] = field(default_factory=dict)
    _complete: dict[str, list[ClipRecord]] = field(default_factory=dict)
    _shard_sources: dict[str, set[str]] = field(default_factory=dict)
    _ready: list[list[ClipRecord]] = field(default_factory=list)
    committed_sources: int = 0
    committed_clips: int = 0
    shard_bytes: int = 0  # bytes of the shards the committed parts name

    def __post_init__(self):
        self.part = self.out.next_part()

    def add(self, rec: ClipRecord) -> None:
        recs = self._open.setdefault(rec.source, [])
        recs.append(rec)
        if len(recs) >= recs[0].n_siblings or rec.is_source:
            src = rec.source
            self._complete[src] = sorted(self._open.pop(src), key=lambda r: (r.clip_index is not None, r.clip_index or 0))
            for r in self._complete[src]:
                if r.data.get("shard"):
                    self._shard_sources.setdefault(r.data["shard"], set()).update(r.data.get("shard_sources") or [src])
            self._release(src)
            if self._should_commit():
                self.commit()

    def _group_of(self, src: str) -> set[str]:
        """`src` and every source linked to it through shared shards."""
        group, todo = {src}, [src]
        while todo:
            s = todo.pop()
            for r in self._complete.get(s, self._open.get(s, [])):
                for o in self._shard_sources.get(r.data.get("shard") or "", ()):
                    if o not in group:
                        group.add(o)
                        todo.append(o)
        return group

    def _release(self, src: str) -> None:
        group = self._group_of(src)
        if all(s in self._complete for s in group):
            for s in sorted(group):
                self._ready.append(self._complete.pop(s))

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
        """Kept records still carrying their bytes, packed here into tars of at most shard_max_samples /
        shard_max_bytes."""
        shards: dict[str, tuple[bytes, list[str]]] = {}
        group: list[ClipRecord] = []
        size = 0

        def flush():
            nonlocal group, size
            if group:
                data = pack_tar([(r.key, sample_json(r, self.manifest_name, self.fps, self.audio_rate), r.blobs)
                                 for r in group])
                shards[new_shard_name()] = (data, [r.key for r in group])
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
        packed = self._pack([r for r in kept if r.blobs and not r.data.get("shard")])
        shard_of = {k: name for name, (_, keys) in packed.items() for k in keys}
        sizes = {name: len(b) for name, (b, _) in packed.items()}
        for r in kept:
            if r.data.get("shard"):
                shard_of[r.key] = r.data["shard"]
                sizes[r.data["shard"]] = int(r.data.get("shard_bytes") or 0)
        # text_row: a file name that is not UTF-8 is kept reversibly (curation.engine.pathnames)
        clips = pd.DataFrame([text_row(clip_row(r, shard_of.get(r.key), self.fps, self.keep_data))
                              for g in groups for r in g])
        clips["clip_index"] = clips["clip_index"].astype("Int64")  # null: a source-level row
        sources = pd.DataFrame([text_row(source_row(g, [shard_of[r.key] for r in g if r.key in shard_of]))
                                for g in groups])
        self.out.commit(self.part, {n: b for n, (b, _) in packed.items()}, clips, sources)
        self.part += 1
        self.committed_sources += len(groups)
        self.committed_clips += len([r for r in kept if r.key in shard_of])
        self.shard_bytes += sum(sizes.values())
        for g in groups:  # free the encoded bytes
            for r in g:
                r.blobs.clear()
                self._shard_sources.pop(r.data.get("shard") or "", None)

    def close(self) -> None:
        if self._open:  # records of a source that never completed (should not happen): commit what we have
            for recs in self._open.values():
                self._complete[recs[0].source] = recs
            self._open.clear()
        for s in sorted(self._complete):
            self._ready.append(self._complete[s])
        self._complete.clear()
        self.commit()


def _cache_dir(uri: str) -> Path:
    import hashlib

    root = Path(os.environ.get("CURATION_CACHE", Path.home() / ".cache" / "talkcurate")) / "remote"
    return root / hashlib.sha1(uri.encode()).hexdigest()[:16]


def localize_remote_args(a) -> None:
    """For the commands that read an output (report, inspect, export-talkverse, train): an argument naming an
    object-store URI is replaced by a local copy of what it names, so that they read it as a local one."""
    cmd = getattr(a, "command", None) or getattr(getattr(a, "func", None), "__name__", "")
    for attr in ("dir", "shard", "shards"):
        v = getattr(a, attr, None)
        if not isinstance(v, str) or not is_remote(v):
            continue
        v = v.rstrip("/")
        dest = _cache_dir(v)
        if attr == "shard":  # one tar
            dest.mkdir(parents=True, exist_ok=True)
            parent, name = v.rsplit("/", 1)
            (dest / name).write_bytes(Store(parent).read(name))
            setattr(a, attr, str(dest / name))
        elif attr == "shards" and v.endswith("/shards"):  # DIR/shards of an output: its committed shards
            setattr(a, attr, str(local_copy(v[: -len("/shards")], dest) / "shards"))
        elif attr == "shards":  # a prefix of tars
            dest.mkdir(parents=True, exist_ok=True)
            st = Store(v)
            for n in st.list(""):
                if n.endswith(".tar"):
                    (dest / n).write_bytes(st.read(n))
            setattr(a, attr, str(dest))
        else:
            setattr(a, attr, str(local_copy(v, dest)))
        print(f"{v}: read from a local copy in {getattr(a, attr)}", file=sys.stderr)
