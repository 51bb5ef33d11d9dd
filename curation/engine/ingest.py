"""Ingest: turn --input (a directory, a file, or a list file) into source paths, optionally with external audio.

Local paths and file:// URIs are read directly; other URIs (s3://, gs://, hdfs://...) are listed through
pyarrow.fs and fetched to a node-local cache when a stage first opens them (curation.media.ffmpeg.local_path)."""

from __future__ import annotations

import json
import os
from pathlib import Path

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


def _list_remote_dir(uri: str) -> list[str]:
    from pyarrow import fs

    filesystem, root = fs.FileSystem.from_uri(uri)
    scheme = uri.split("://", 1)[0]
    infos = filesystem.get_file_info(fs.FileSelector(root, recursive=True))
    return sorted(f"{scheme}://{i.path}" for i in infos
                  if i.type == fs.FileType.File and Path(i.path).suffix.lower() in VIDEO_EXTENSIONS)


def _read_list(path: Path) -> list[tuple[str, str | None]]:
    ext = path.suffix.lower()
    base = path.parent
    rows: list[tuple[str, str | None]] = []
    if ext == ".txt":
        for line in path.read_text(encoding="utf-8").splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                rows.append((line, None))
    elif ext == ".jsonl":
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise InputError(f"{path}:{n}: not JSON: {e}") from None
            if "path" not in obj:
                raise InputError(f"{path}:{n}: no 'path' key")
            rows.append((str(obj["path"]), obj.get("audio_path") or None))
    else:
        import pandas as pd

        df = pd.read_csv(path) if ext == ".csv" else pd.read_parquet(path)
        if "path" not in df.columns:
            raise InputError(f"{path}: no 'path' column (columns: {list(df.columns)})")
        audio = df["audio_path"] if "audio_path" in df.columns else [None] * len(df)
        rows = [(str(p), (str(a) if isinstance(a, str) and a else None)) for p, a in zip(df["path"], audio)]

    def absolute(p: str | None) -> str | None:
        if p is None or _is_uri(p):
            return p
        q = Path(_strip_file(p))
        return str(q if q.is_absolute() else (base / q).resolve())

    return [(absolute(p), absolute(a)) for p, a in rows]


def list_inputs(input_path: str) -> list[tuple[str, str | None]]:
    """(source path, external audio path or None) for every input, deduplicated, in a stable order."""
    if _is_uri(input_path):
        from pyarrow import fs

        filesystem, root = fs.FileSystem.from_uri(input_path)
        info = filesystem.get_file_info(root)
        if info.type == fs.FileType.NotFound:
            raise InputError(f"input not found: {input_path}")
        if info.type == fs.FileType.Directory:
            return [(p, None) for p in _list_remote_dir(input_path)]
        return [(input_path, None)]
    p = Path(_strip_file(input_path))
    if not p.exists() and not p.is_symlink():
        raise InputError(f"input not found: {input_path}")
    if p.is_dir():
        found = []
        for dirpath, dirnames, filenames in os.walk(p, followlinks=False):
            dirnames.sort()
            # a directory named like a video is still a candidate source (and will be rejected as unreadable)
            for name in sorted(filenames) + [d for d in dirnames if Path(d).suffix.lower() in VIDEO_EXTENSIONS]:
                if Path(name).suffix.lower() in VIDEO_EXTENSIONS:
                    found.append((str(Path(dirpath) / name), None))
        return sorted(set(found))
    if p.suffix.lower() in LIST_EXTENSIONS:
        rows = _read_list(p)
        seen, out = set(), []
        for r in rows:
            if r[0] not in seen:
                seen.add(r[0])
                out.append(r)
        return out
    return [(str(p.resolve()) if not p.is_symlink() else str(p.absolute()), None)]
