"""Shared fixtures: the real footage and weights in ../shared, and stage contexts for tests without Ray."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("CURATION_SHARED", ROOT.parent / "shared"))
FOOTAGE = Path(os.environ.get("CURATION_FOOTAGE", SHARED / "footage"))
WEIGHTS = Path(os.environ.get("CURATION_WEIGHTS", SHARED / "weights"))


@pytest.fixture(scope="session")
def footage() -> Path:
    if not FOOTAGE.is_dir():
        pytest.fail(f"shared footage not found at {FOOTAGE} (set CURATION_FOOTAGE)")
    return FOOTAGE


@pytest.fixture(scope="session")
def weights_dir() -> Path:
    if not WEIGHTS.is_dir():
        pytest.fail(f"shared weights not found at {WEIGHTS} (set CURATION_WEIGHTS)")
    return WEIGHTS


@pytest.fixture
def stage_ctx(weights_dir):
    """A StageContext as the pipeline builds it from the default manifest."""
    from stages.base import StageContext

    def make(**kw):
        base = dict(weights_dir=str(weights_dir), fps=25.0, audio_rate=16000, score_only=False, timeout_s=600.0,
                    video={"crf": 20, "preset": "veryfast"})
        base.update(kw)
        return StageContext(**base)

    return make


def ffmpeg(*args: str) -> None:
    """Run ffmpeg with an argument list (never a shell); raise with its stderr on failure."""
    p = subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-y", *args], capture_output=True)
    if p.returncode != 0:
        raise RuntimeError(p.stderr.decode(errors="replace"))


def source_record(path: Path | str, audio_path: str | None = None):
    """A probed source record (probe stage run for real) for stage tests without Ray."""
    from curation.config import load_manifest
    from curation.record import ClipRecord
    from stages.base import StageContext
    from stages.probe import ProbeStage

    m = load_manifest()
    ctx = StageContext(weights_dir=str(WEIGHTS))
    rec = ClipRecord.for_source(str(path), audio_path)
    (rec,) = ProbeStage(m.params("probe"), ctx).process([rec])
    return rec


def clip_record(path: Path | str, start_s: float = 0.0, end_s: float | None = None, audio_path: str | None = None):
    """A candidate clip record spanning [start_s, end_s) of a probed source (the scenes stage's output shape)."""
    src = source_record(path, audio_path)
    end = src.probe["duration_s"] if end_s is None else end_s
    return src.child(0, 1, start_s, end)


assert shutil.which("ffmpeg"), "ffmpeg must be installed (make test installs it)"
