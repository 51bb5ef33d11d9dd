"""The pre-flight: a machine without a tool the run needs stops the run before any work, with one line."""

from __future__ import annotations

import os
import shutil
import subprocess

from conftest import ROOT, WEIGHTS, run_cli


def _curation(args: list[str], path: str, **env) -> subprocess.CompletedProcess:
    e = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "CURATION_FFMPEG", "CURATION_FFPROBE")}
    e.update(PATH=path, CURATION_WEIGHTS=str(WEIGHTS), **env)
    exe = str(ROOT / ".venv" / "bin" / "curation") if (ROOT / ".venv").exists() else shutil.which("curation")
    return subprocess.run([exe, *args], capture_output=True, text=True, env=e, timeout=300)


def test_no_ffprobe_on_path_stops_before_anything_is_written(tmp_path, footage):
    bin_dir = tmp_path / "bin"  # a PATH with ffmpeg and nothing else: no ffprobe
    bin_dir.mkdir()
    os.symlink(shutil.which("ffmpeg"), bin_dir / "ffmpeg")
    out = tmp_path / "sub" / "out"
    p = _curation(["run", "--input", str(footage), "--output", str(out)], str(bin_dir))
    assert p.returncode != 0
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1, p.stderr
    assert "ffprobe" in lines[0] and "apt-get install ffmpeg" in lines[0] and "missing ffprobe (" in lines[0] and "missing ffmpeg" not in lines[0]
    assert p.stdout == ""
    assert not (tmp_path / "sub").exists()  # nothing written, not even the output directory
    assert not list(tmp_path.glob("**/*.tmp"))


def test_every_problem_in_one_line(tmp_path, footage):
    """No ffmpeg at all, an ffmpeg without libx264 (CURATION_FFMPEG), weights missing, an unwritable output."""
    empty = tmp_path / "empty_bin"
    empty.mkdir()
    p = _curation(["run", "--input", str(footage), "--output", str(tmp_path / "o1")], str(empty))
    assert p.returncode != 0 and len(p.stderr.strip().splitlines()) == 1
    assert "ffmpeg" in p.stderr and "ffprobe" in p.stderr and not (tmp_path / "o1").exists()

    # an ffmpeg that lists no libx264 encoder: a wrapper script named by CURATION_FFMPEG
    fake = tmp_path / "ffmpeg-nox264"
    fake.write_text("#!/bin/sh\n" f"{shutil.which('ffmpeg')} \"$@\" | grep -v libx264\n")
    fake.chmod(0o755)
    ro = tmp_path / "readonly"
    ro.mkdir()
    ro.chmod(0o555)
    p = _curation(["run", "--input", str(footage), "--output", str(ro / "out"), "--weights", str(tmp_path / "now")],
                  os.environ["PATH"], CURATION_FFMPEG=str(fake))
    ro.chmod(0o755)
    assert p.returncode != 0 and len(p.stderr.strip().splitlines()) == 1, p.stderr
    msg = p.stderr
    assert "no libx264 encoder" in msg and "aac" not in msg.split("encoder")[0].split("no ")[-1]
    assert "weights fetch" in msg  # the weights, named with how to get them
    if os.geteuid() != 0:  # root writes anywhere
        assert "cannot be created" in msg
    assert not (ro / "out").exists()


def test_preflight_passes_on_this_machine(tmp_path, weights_dir):
    from curation.engine.config import load_manifest
    from curation.engine.preflight import check_tools, preflight

    assert check_tools() == []
    preflight(load_manifest(), str(weights_dir), tmp_path / "new" / "out")
    assert not (tmp_path / "new").exists()
    run_cli("weights", "list")
