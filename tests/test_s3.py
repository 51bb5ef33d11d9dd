"""An object store as input and output: moto's S3 server on localhost (its standalone mode, a process of its own),
spoken to over HTTP by pyarrow.fs.S3FileSystem. `curation run --input s3://... --output s3://...` on a local Ray,
kill -9 of the driver mid-run and a rerun giving exactly the uninterrupted result, and report, inspect,
export-talkverse and train reading that output."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from conftest import FOOTAGE, ROOT
from test_faults import KILL_MANIFEST, check_output_dir, cli_env, kill_when, run_ok, span_table

MOTO = ROOT / ".venv" / "bin" / "moto_server"
if not MOTO.exists():
    MOTO = Path(shutil.which("moto_server") or "moto_server")
KEY = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """(pyarrow S3FileSystem, environment for the CLI) of a moto server of this module's own."""
    from pyarrow import fs

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    with open(log, "wb") as f:
        proc = subprocess.Popen([str(MOTO), "-H", "127.0.0.1", "-p", str(port)], stdout=f, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
                time.sleep(0.2)
        s3fs = fs.S3FileSystem(endpoint_override=f"127.0.0.1:{port}", scheme="http", access_key=KEY["AWS_ACCESS_KEY_ID"],
                               secret_key=KEY["AWS_SECRET_ACCESS_KEY"], region=KEY["AWS_DEFAULT_REGION"],
                               allow_bucket_creation=True)
        env = cli_env(AWS_ENDPOINT_URL=f"http://127.0.0.1:{port}", **KEY)
        yield s3fs, env
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def _download(s3fs, prefix: str, dest: Path) -> Path:
    """Everything under s3://prefix, as it is in the store (orphans and temporary files included)."""
    from pyarrow import fs

    for info in s3fs.get_file_info(fs.FileSelector(prefix, recursive=True)):
        if info.type == fs.FileType.File:
            p = dest / os.path.relpath(info.path, prefix)
            p.parent.mkdir(parents=True, exist_ok=True)
            with s3fs.open_input_stream(info.path) as f:
                p.write_bytes(f.read())
    return dest


def _parts(s3fs, prefix: str) -> int:
    from pyarrow import fs

    try:
        sel = fs.FileSelector(f"{prefix}/audit/parts", allow_not_found=True)
        return sum(1 for i in s3fs.get_file_info(sel) if i.base_name.startswith("sources-"))
    except OSError:
        return 0


@pytest.mark.slow
def test_s3_input_and_output_kill_9_and_readers(s3, tmp_path):
    s3fs, env = s3
    s3fs.create_dir("talk")
    names = ("A1_hdtf_bob_menendez_talking_8s.mp4", "S04_VideoReTalking_man-map-backdrop_address_5s.mp4",
             "D5_lowq_carphone_176x144_pristine_4s.mp4")
    for n in names:
        with s3fs.open_output_stream(f"talk/in/{n}") as f:
            f.write((FOOTAGE / n).read_bytes())
    with s3fs.open_output_stream("talk/in/random_bytes.mp4") as f:
        f.write(os.urandom(100_000))
    manifest = tmp_path / "kill.yaml"
    # test_faults' manifest, with a probe time limit that also covers fetching a source from the store on a
    # loaded machine (5 s there)
    manifest.write_text(KILL_MANIFEST.replace("timeout_s: 5}", "timeout_s: 60}"))
    assert "timeout_s: 60}" in manifest.read_text()

    def args(out: str) -> list[str]:
        return ["run", "--input", "s3://talk/in", "--output", out, "--manifest", str(manifest), "--num-cpus", "2"]

    run_ok(args("s3://talk/ref"), tmp_path / "ref.log", env=env)

    # kill -9 of the driver right after its first commit, then the same command again
    killed = kill_when(args("s3://talk/out"), tmp_path / "killed.log", lambda: _parts(s3fs, "talk/out") >= 1,
                       timeout_s=600, poll_s=0.05, env=env)
    killed_at = _parts(s3fs, "talk/out") if killed else None
    assert killed_at is not None and killed_at < 4, (killed_at, (tmp_path / "killed.log").read_text()[-3000:])
    text = run_ok(args("s3://talk/out"), tmp_path / "rerun.log", env=env)
    assert "already done" in text

    ref = _download(s3fs, "talk/ref", tmp_path / "ref")
    out = _download(s3fs, "talk/out", tmp_path / "out")
    index, expected = check_output_dir(out), check_output_dir(ref)  # no orphan shard, no temporary file
    assert len(index) >= 2
    assert sorted(index["key"]) == sorted(expected["key"])
    assert span_table(out) == span_table(ref)
    assert len(pd.read_parquet(out / "audit" / "sources.parquet")) == 4
    assert {Path(s).name for s in pd.read_parquet(out / "audit" / "sources.parquet")["source"]} == {*names, "random_bytes.mp4"}

    # the readers take the s3:// output as they take a local one
    cache = dict(env, CURATION_CACHE=str(tmp_path / "cache"))
    text = run_ok(["report", "s3://talk/out"], tmp_path / "report.log", env=cache)
    assert "kept" in text and "report:" in text
    shard = sorted(index["shard"])[0]
    text = run_ok(["inspect", "--json", f"s3://talk/out/shards/{shard}"], tmp_path / "inspect.log", env=cache)
    assert sorted(index.loc[index["shard"] == shard, "key"])[0] in text
    run_ok(["export-talkverse", "s3://talk/out", str(tmp_path / "export")], tmp_path / "export.log", env=cache)
    meta = pd.read_csv(tmp_path / "export" / "meta.csv")
    assert sorted(meta["key"]) == sorted(index["key"])
    run_ok(["train", "--shards", "s3://talk/out/shards", "--config", "tiny", "--out", str(tmp_path / "train"),
            "--steps", "2", "--device", "cpu"], tmp_path / "train.log", env=cache, timeout=600)
    assert (tmp_path / "train" / "last.pt").exists()
