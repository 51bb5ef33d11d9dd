"""Ingest: turn --input (a directory, a file, or a list file) into source paths, optionally with external audio,
read lazily so that a listing of millions of sources is streamed, never held whole.

Local paths and file:// URIs are read directly; other URIs (s3://, gs://, hdfs://...) are listed through
pyarrow.fs and fetched to a node-local cache when a stage first opens them (curation.media.ffmpeg.local_path)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterator

VIDEO_EXTENSIONS = {".mp4", ".mov", ".mkv", ".avi", ".webm", ".m4v", ".mpg", ".mpeg", ".ts", ".mts", ".flv",
                    ".wmv", ".3gp", ".ogv", ".mxf"}
LIST_EXTENSIONS = {".txt", ".csv", ".jsonl", ".parquet"}


class InputError(ValueError):
    pass


def _is_uri(p: str) -> bool:
    return "://" in p and not p.startswith("file://")


def _strip_file(p: str) -> str:
    return p[len("file://"):] if p.startswith("file://") else p


def absolute_path(path: str) -> str:
    """A local path (or file:// URI) made absolute against this process's working directory; other URIs
    unchanged. Workers of a cluster started with `ray start` run in their raylet's working directory, not the
    driver's: a relative path handed to them would name another file there, or none."""
    return path if _is_uri(path) else os.path.abspath(_strip_file(path))


def _iter_remote_dir(uri: str) -> Iterator[str]:
    """Video files under an object-store prefix, listed page by page (never the whole listing in memory at
    once on the store's side; pyarrow yields FileInfo lists per directory)."""
    from pyarrow import fs

    filesystem, root = fs.FileSystem.from_uri(uri)
    scheme = uri.split("://", 1)[0]
    sel = fs.FileSelector(root, recursive=True)
    for i in filesystem.get_file_info(sel):
        if i.type == fs.FileType.File and Path(i.path).suffix.lower() in VIDEO_EXTENSIONS:
            yield f"{scheme}://{i.path}"


def _lines(path: str) -> Iterator[str]:
    if _is_uri(path):
        import io

        from pyarrow import fs

        filesystem, p = fs.FileSystem.from_uri(path)
        with filesystem.open_input_stream(p) as f:
            yield from io.TextIOWrapper(io.BufferedReader(f), encoding="utf-8")
    else:
        with open(path, encoding="utf-8") as f:
            yield from f


def _iter_list(path: str, batch_rows: int = 65536) -> Iterator[tuple[str, str | None]]:
    """Rows of a list file, read in batches: .txt (one path a line), .jsonl, .csv or .parquet with a `path`
    column and an optional `audio_path` column. Relative local paths are relative to the list file."""
    ext = Path(path).suffix.lower()
    base = None if _is_uri(path) else Path(_strip_file(path)).parent

    def absolute(p: str | None) -> str | None:
        if p is None or _is_uri(p) or base is None:
            return p
        q = Path(_strip_file(p))
        return str(q if q.is_absolute() else (base / q).resolve())

    def audio(a) -> str | None:
        return str(a) if isinstance(a, str) and a else None

    if ext == ".txt":
        for line in _lines(path):
            line = line.strip()
            if line and not line.startswith("#"):
                yield absolute(line), None
    elif ext == ".jsonl":
        for n, line in enumerate(_lines(path), 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise InputError(f"{path}:{n}: not JSON: {e}") from None
            if "path" not in obj:
                raise InputError(f"{path}:{n}: no 'path' key")
            yield absolute(str(obj["path"])), absolute(audio(obj.get("audio_path")))
    elif ext == ".csv":
        import pandas as pd

        src = _lines(path) if _is_uri(path) else _strip_file(path)
        if _is_uri(path):
            import io

            src = io.StringIO("".join(src))  # a remote csv list: read whole (use parquet for big listings)
        for chunk in pd.read_csv(src, chunksize=batch_rows):
            if "path" not in chunk.columns:
                raise InputError(f"{path}: no 'path' column (columns: {list(chunk.columns)})")
            aud = chunk["audio_path"] if "audio_path" in chunk.columns else [None] * len(chunk)
            for p, a in zip(chunk["path"], aud):
                yield absolute(str(p)), absolute(audio(a))
    else:
        import pyarrow.parquet as pq

        if _is_uri(path):
            from pyarrow import fs

            filesystem, p = fs.FileSystem.from_uri(path)
            pf = pq.ParquetFile(filesystem.open_input_file(p))
        else:
            pf = pq.ParquetFile(_strip_file(path))
        names = pf.schema_arrow.names
        if "path" not in names:
            raise InputError(f"{path}: no 'path' column (columns: {names})")
        cols = ["path"] + (["audio_path"] if "audio_path" in names else [])
        for batch in pf.iter_batches(batch_size=batch_rows, columns=cols):
            d = batch.to_pydict()
            aud = d.get("audio_path") or [None] * len(d["path"])
            for p, a in zip(d["path"], aud):
                yield absolute(str(p)), absolute(audio(a))


def iter_inputs(input_path: str) -> Iterator[tuple[str, str | None]]:
    """(source path, external audio path or None) for every input, read lazily (a listing of millions of
    entries is never held whole), without repeats, in a stable order. A missing input raises InputError at the
    first next()."""
    seen: set[str] = set()
    for row in _iter_inputs(input_path):
        if row[0] not in seen:
            seen.add(row[0])
            yield row


def _iter_inputs(input_path: str) -> Iterator[tuple[str, str | None]]:
    if _is_uri(input_path):
        from pyarrow import fs

        filesystem, root = fs.FileSystem.from_uri(input_path)
        info = filesystem.get_file_info(root)
        if info.type == fs.FileType.NotFound:
            raise InputError(f"input not found: {input_path}")
        if info.type == fs.FileType.Directory:
            yield from ((p, None) for p in _iter_remote_dir(input_path))
        elif Path(root).suffix.lower() in LIST_EXTENSIONS:
            yield from _iter_list(input_path)
        else:
            yield input_path, None
        return
    p = Path(_strip_file(input_path))
    if not p.exists() and not p.is_symlink():
        raise InputError(f"input not found: {input_path}")
    if p.is_dir():
        for dirpath, dirnames, filenames in os.walk(p, followlinks=False):
            dirnames.sort()
            # a directory named like a video is still a candidate source (and will be rejected as unreadable)
            for name in sorted(filenames + [d for d in dirnames if Path(d).suffix.lower() in VIDEO_EXTENSIONS]):
                if Path(name).suffix.lower() in VIDEO_EXTENSIONS:
                    yield str(Path(dirpath) / name), None
        return
    if p.suffix.lower() in LIST_EXTENSIONS:
        yield from _iter_list(str(p))
        return
    yield (str(p.resolve()) if not p.is_symlink() else str(p.absolute())), None


def list_inputs(input_path: str) -> list[tuple[str, str | None]]:
    """iter_inputs as a list (small inputs, tests)."""
    return list(iter_inputs(input_path))
