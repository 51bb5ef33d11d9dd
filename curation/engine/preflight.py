"""Preflight: everything a run needs from this machine, checked before any work and before anything is written.

What is checked: ffmpeg and ffprobe can be found (`CURATION_FFMPEG` / `CURATION_FFPROBE` override the names
looked up on PATH), ffmpeg has the encoders the write stage uses (libx264, aac), every weight file of every
enabled stage is there (`check_weights`), and the output directory can be created or written. Every problem
found goes into one message, on one line, that names what is missing and how to get it; the run then stops
with a non-zero exit and no output directory is created."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

# The encoders curation.media.ffmpeg.encode_clip asks for (and the export's re-encode).
WRITE_ENCODERS = ("libx264", "aac")
INSTALL_HINT = "install ffmpeg (Debian/Ubuntu: `sudo apt-get install ffmpeg`; `make install` does it)"


class PreflightError(RuntimeError):
    """What this machine lacks for the run; the message is one line naming each missing thing."""


def find_tool(name: str, env_var: str) -> tuple[str | None, str]:
    """(full path or None, the name looked for): `env_var` if set, else `name` on PATH."""
    want = os.environ.get(env_var) or name
    return shutil.which(want), want


def ffmpeg_encoders(ffmpeg: str, timeout: float = 30.0) -> set[str] | None:
    """The encoder names `ffmpeg -encoders` lists (None when ffmpeg cannot be run)."""
    try:
        p = subprocess.run([ffmpeg, "-hide_banner", "-nostdin", "-encoders"], capture_output=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if p.returncode != 0:
        return None
    names = set()
    for line in p.stdout.decode("utf-8", "replace").splitlines():
        parts = line.split()
        # encoder lines: " V....D libx264   libx264 H.264 ..." (flags, name, description)
        if len(parts) >= 2 and len(parts[0]) == 6 and parts[0][0] in "VAS" and set(parts[0][1:]) <= set("FSXBD."):
            names.add(parts[1])
    return names


def check_tools(need_encoders: bool = True) -> list[str]:
    problems = []
    ffmpeg, ffmpeg_name = find_tool("ffmpeg", "CURATION_FFMPEG")
    ffprobe, ffprobe_name = find_tool("ffprobe", "CURATION_FFPROBE")
    missing = [f"{n} ({v!r} not found{' on PATH' if os.sep not in v else ''}; {env} names another)"
               for n, v, found, env in (("ffmpeg", ffmpeg_name, ffmpeg, "CURATION_FFMPEG"),
                                        ("ffprobe", ffprobe_name, ffprobe, "CURATION_FFPROBE")) if not found]
    if missing:
        problems.append(f"missing {' and '.join(missing)}: {INSTALL_HINT}")
    if ffmpeg and need_encoders:
        enc = ffmpeg_encoders(ffmpeg)
        if enc is None:
            problems.append(f"{ffmpeg} does not run (`{ffmpeg} -encoders` failed): {INSTALL_HINT}")
        else:
            lacking = [e for e in WRITE_ENCODERS if e not in enc]
            if lacking:
                problems.append(f"{ffmpeg} has no {' or '.join(lacking)} encoder, which the write stage needs: "
                                f"install a full ffmpeg build (Debian/Ubuntu's `ffmpeg` package has both)")
    return problems


def check_output(output: str | os.PathLike) -> list[str]:
    """The output directory exists and is writable, or its nearest existing parent is (nothing is created).
    On an object store (s3://, gs://): its file system can be reached and the prefix listed."""
    from curation.engine.output import Store, is_remote

    if is_remote(os.fspath(output)):
        try:
            Store(os.fspath(output)).list("")
        except Exception as e:  # credentials, endpoint, bucket: whatever pyarrow.fs says
            return [f"output {output} cannot be reached: {type(e).__name__}: {e}"]
        return []
    p = Path(os.path.abspath(os.fspath(output)))
    if p.exists() or p.is_symlink():
        if not p.is_dir():
            return [f"output {p} exists and is not a directory: choose another --output"]
        if not os.access(p, os.W_OK | os.X_OK):
            return [f"output directory {p} is not writable by this user: fix its permissions or choose another --output"]
        return []
    parent = p.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        return [f"output {p} cannot be created: {parent} is not a writable directory; choose another --output"]
    return []


def check_weights_all(manifest, wdir: str) -> list[str]:
    from curation.engine.pipeline import check_weights
    from curation.weights import WeightsMissing

    try:
        check_weights(manifest, wdir)
    except (WeightsMissing, FileNotFoundError, ValueError) as e:
        return [str(e)]
    return []


def preflight(manifest, wdir: str, output: str | os.PathLike) -> None:
    """Raise PreflightError (one line, every problem) when this machine cannot make the run."""
    stages = {s.name for s in manifest.enabled_stages()}
    problems = check_tools(need_encoders="write" in stages)
    problems += check_weights_all(manifest, wdir)
    problems += check_output(output)
    if problems:
        raise PreflightError("; ".join(" ".join(p.split()) for p in problems))
