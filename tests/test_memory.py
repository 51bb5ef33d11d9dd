"""A source too large for its stage's memory request is read at a lower resolution, or rejected with a reason, and
its worker is never killed for memory: a real 8K clip (ffmpeg's testsrc2, 1 s) through the person stage as a
pipeline worker runs it (pipeline.StageActor, the adapter Ray builds each actor from), in a process of its own
whose peak RSS is read from the kernel (VmHWM)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from conftest import ROOT, WEIGHTS, ffmpeg

WORKER = r"""
import json, sys
from curation.engine.config import load_manifest
from curation.engine.pipeline import StageActor, _batch, _records
from conftest import clip_record
from stages.base import StageContext


def peak_rss():  # this process image's own high-water mark: getrusage's ru_maxrss would keep the forking pytest's
    with open("/proc/self/status") as f:  # (a parent of 1.3 GiB late in the suite), not reset by exec
        return next(int(ln.split()[1]) * 1024 for ln in f if ln.startswith("VmHWM:"))


path, memory_gb = sys.argv[1], (float(sys.argv[2]) if sys.argv[2] != "none" else None)
m = load_manifest("default")
ctx = StageContext(weights_dir=sys.argv[3], fps=25.0, audio_rate=16000, timeout_s=600.0)
actor = StageActor("person", m.params("person").model_dump(), ctx, memory_gb=memory_gb)
(rec,) = _records(actor(_batch([clip_record(path, 0.0, 1.0)])))
print("RESULT=" + json.dumps({"status": rec.status, "reason": rec.reason, "message": rec.message,
                              "timings": sorted(rec.timings),
                              "peak_rss": peak_rss()}))
"""


@pytest.fixture(scope="module")
def clip_8k(tmp_path_factory):
    p = tmp_path_factory.mktemp("mem") / "testsrc2_8k.mp4"
    ffmpeg("-f", "lavfi", "-i", "testsrc2=size=7680x4320:rate=10", "-f", "lavfi", "-i", "sine=frequency=300:sample_rate=16000",
           "-t", "1", "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", "-c:a", "aac", "-shortest", str(p))
    return p


def person_worker(clip, memory_gb) -> dict:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "tests")]))
    p = subprocess.run([sys.executable, "-c", WORKER, str(clip), str(memory_gb).lower(), str(WEIGHTS)],
                       capture_output=True, text=True, timeout=600, env=env)
    assert p.returncode == 0, p.stderr[-4000:]
    line = next(ln for ln in p.stdout.splitlines() if ln.startswith("RESULT="))
    return json.loads(line[len("RESULT="):])


def test_an_8k_source_within_a_small_memory_request(clip_8k):
    gib = 2**30
    # No memory request: decord decodes the 8K frames at full size (what took a model actor to 2.3 GiB before).
    free = person_worker(clip_8k, None)
    # The default manifest's person request (1.0 GiB): the same source read at the decode size through ffmpeg.
    fitted = person_worker(clip_8k, 1.0)
    # A request below what the worker holds with its models loaded: nothing is left for a decode.
    tiny = person_worker(clip_8k, 0.1)
    print(f"person on 8K: no request peak {free['peak_rss'] / gib:.2f} GiB; request 1.0 GiB: peak "
          f"{fitted['peak_rss'] / gib:.2f} GiB, {fitted['status']} {fitted['reason']}; request 0.1: {tiny['reason']}")

    assert free["peak_rss"] > 1.0 * gib  # the problem is real: a full-size decode does not fit the request
    assert fitted["peak_rss"] < 1.0 * gib  # read smaller: within the request
    assert "person" in fitted["timings"] and fitted["reason"] not in ("too_large", "error:person", "unreadable")
    assert free["reason"] == fitted["reason"]  # the same decision from the smaller read (testsrc2: no face)
    assert tiny["status"] == "rejected" and tiny["reason"] == "too_large", tiny
    assert "memory_gb" in tiny["message"]
