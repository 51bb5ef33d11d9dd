"""Faults (issue 8): kill -9 of the driver, workers that die or hang, stages that raise, and a corpus of bad
inputs. Real `curation run` subprocesses on a real local Ray; faults are injected into real workers through
CURATION_FAULTS (curation/engine/faults.py), never mocked."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import tarfile
import threading
import time
from pathlib import Path

import pandas as pd
import pytest
import webdataset as wds
import yaml

from badinputs import SECONDS, corpus_manifest, make_corpus, tree_snapshot
from conftest import FOOTAGE, ROOT, WEIGHTS, source_record

CLI = str(ROOT / ".venv" / "bin" / "curation") if (ROOT / ".venv").exists() else "curation"

KILL_MANIFEST = """\
name: faults-kill
description: probe, scenes and write, a commit after every source (several commit points in a tiny run).
video: {preset: ultrafast}
output: {commit_every_sources: 1, shard_max_samples: 1}  # a shard per clip: commits as clips arrive
stages:
  - name: probe
    params: {min_duration_s: 1.0}
    resources: {num_cpus: 0.25, batch_size: 1, timeout_s: 5}
  - name: scenes
    params: {min_s: 1.0}
    resources: {num_cpus: 0.5, batch_size: 1, timeout_s: 120}
  - name: write
    params: {}
    resources: {num_cpus: 0.5, batch_size: 1, timeout_s: 120}
"""


# ---------------------------------------------------------------------------------------------------
# Running the CLI as a process of its own (its own session, so whatever Ray leaves behind can be ended)

def cli_env(**extra: str) -> dict:
    env = dict(os.environ, CURATION_WEIGHTS=str(WEIGHTS), RAY_DEDUP_LOGS="0")
    env.pop("RAY_ADDRESS", None)
    env.update(extra)
    return env


def start_cli(args: list[str], log: Path, env: dict | None = None, cwd: Path | None = None) -> subprocess.Popen:
    f = open(log, "ab")
    try:
        return subprocess.Popen([CLI, *args], stdout=f, stderr=subprocess.STDOUT, env=env or cli_env(), cwd=cwd,
                                start_new_session=True)
    finally:
        f.close()


def end_group(proc: subprocess.Popen) -> None:
    """End what is left of the process group this test started (Ray's agents can outlive a killed driver)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def kill_when(args: list[str], log: Path, trigger, timeout_s: float, poll_s: float = 0.01,
              env: dict | None = None) -> bool:
    """Run `curation args` and SIGKILL the driver as soon as trigger() is true (polled every poll_s, for at most
    timeout_s or until it exits); then end its process group. True when it was killed."""
    proc = start_cli(args, log, env)
    killed = False
    try:
        t0 = time.monotonic()
        while proc.poll() is None and time.monotonic() - t0 < timeout_s:
            if trigger():
                os.kill(proc.pid, signal.SIGKILL)
                killed = True
                break
            time.sleep(poll_s)
        proc.wait(timeout=60)
    finally:
        end_group(proc)
    return killed


def run_ok(args: list[str], log: Path, env: dict | None = None, cwd: Path | None = None, timeout: float = 600) -> str:
    proc = start_cli(args, log, env, cwd)
    try:
        rc = proc.wait(timeout=timeout)
    finally:
        end_group(proc)
    text = log.read_text(errors="replace")
    assert rc == 0, f"curation {' '.join(args)} exited {rc}\n{text[-6000:]}"
    return text


def read_clips(out: Path) -> pd.DataFrame:
    return pd.read_parquet(out / "audit" / "clips.parquet")


def rows_of(df: pd.DataFrame, path: str) -> pd.DataFrame:
    """The rows of source `path` (a name that is not UTF-8: its escaped text, and its exact bytes in
    source_bytes, from which curation.engine.pathnames.original gives the name back)."""
    from curation.engine.pathnames import as_text, is_utf8, original

    rows = df[df["source"] == as_text(path)]
    if not is_utf8(path) and len(rows):
        assert (rows["source_bytes"] == os.fsencode(path)).all()
        assert all(original(t, b) == path for t, b in zip(rows["source"], rows["source_bytes"]))
    return rows


def span_table(out: Path) -> list[tuple]:
    """(key, status, stage, reason, start, end) of every candidate: what two equal runs must agree on."""
    c = read_clips(out)
    r = lambda v: None if pd.isna(v) else round(float(v), 4)  # noqa: E731
    s = lambda v: None if pd.isna(v) else str(v)  # noqa: E731
    return sorted((k, st, s(sg), s(rs), r(a), r(b)) for k, st, sg, rs, a, b in
                  zip(c["key"], c["status"], c["stage"], c["reason"], c["start_s"], c["end_s"]))


def check_output_dir(out: Path) -> pd.DataFrame:
    """The invariants of a finished output directory; returns the index."""
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")], "temporary files left behind"
    index = pd.read_parquet(out / "index.parquet")
    clips = read_clips(out)
    sources = pd.read_parquet(out / "audit" / "sources.parquet")
    assert index["key"].is_unique and clips["key"].is_unique and sources["source"].is_unique
    assert set(index["key"]) == set(clips.loc[clips["status"] == "kept", "key"])
    named = set(index["shard"])
    keys: list[str] = []
    for tar in sorted((out / "shards").iterdir()):
        assert tar.name in named, f"orphan shard {tar.name}"
        with tarfile.open(tar) as t:  # end to end: every member's bytes
            for m in t.getmembers():
                assert m.isfile() and len(t.extractfile(m).read()) == m.size
        keys += [s["__key__"] for s in wds.WebDataset(str(tar), shardshuffle=False)]
    assert sorted(keys) == sorted(index["key"]), "shards and index disagree"
    return index


def ffprobe_streams(path: Path) -> list[dict]:
    p = subprocess.run(["ffprobe", "-v", "error", "-print_format", "json", "-show_streams", str(path)],
                       capture_output=True, text=True, check=True)
    return json.loads(p.stdout)["streams"]


# ---------------------------------------------------------------------------------------------------
# Media-level and stage-level limits, in this process (no Ray)

@pytest.fixture
def fifo(tmp_path) -> Path:
    p = tmp_path / "hangs.mp4"
    os.mkfifo(p)
    return p


def test_a_file_that_hangs_the_decoder_times_out(fifo):
    from curation.media.ffmpeg import MediaError, iter_frames, probe

    t0 = time.monotonic()
    with pytest.raises(MediaError) as e:
        probe(str(fifo), timeout=1.0)
    assert e.value.reason == "timeout:probe"
    with pytest.raises(MediaError) as e:
        list(iter_frames(str(fifo), src_size=(64, 48), timeout=1.0))
    assert e.value.reason == "timeout:decode"
    assert time.monotonic() - t0 < 10


@pytest.mark.parametrize("thread", ["main", "worker"])
def test_stage_time_limit_on_main_and_worker_threads(monkeypatch, stage_ctx, thread):
    """Ray tasks run a stage on the main thread (SIGALRM), Ray Data actors on another (a watchdog raises
    in that thread): both end a clip stuck in Python code as timeout:<stage>, and the next clip is fine."""
    from stages.scenes import ScenesParams, ScenesStage

    monkeypatch.setenv("CURATION_FAULTS", "scenes:hang:A1_hdtf")
    stage = ScenesStage(ScenesParams(), stage_ctx(timeout_s=4.0))
    recs = [source_record(FOOTAGE / "A1_hdtf_bob_menendez_talking_8s.mp4"),
            source_record(FOOTAGE / "A3_retalk_man_suit_talking_6s.mp4")]
    out: list = []
    t0 = time.monotonic()
    if thread == "main":
        out = stage.process(recs)
    else:
        th = threading.Thread(target=lambda: out.extend(stage.process(recs)))
        th.start()
        th.join(60)
    assert time.monotonic() - t0 < 30
    a1 = [r for r in out if "A1_hdtf" in r.key]
    a3 = [r for r in out if "A3_retalk" in r.key]
    assert len(a1) == 1 and a1[0].reason == "timeout:scenes" and "longer than 4 s" in a1[0].message
    assert a3 and all(r.status != "rejected" for r in a3)  # nothing stray raised after the timeout


# ---------------------------------------------------------------------------------------------------
# Kill -9 of the driver

@pytest.fixture(scope="module")
def kill_input(tmp_path_factory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("kill")
    inp = d / "in"
    inp.mkdir()
    for name in ("A1_hdtf_bob_menendez_talking_8s.mp4", "C1_documentary_6shots_anamorphic_25s.mp4",
                 "D5_lowq_carphone_176x144_pristine_4s.mp4"):
        os.symlink(FOOTAGE / name, inp / name)
    (inp / "empty.mp4").write_bytes(b"")
    (inp / "random_bytes.mp4").write_bytes(os.urandom(100_000))
    manifest = d / "kill.yaml"
    manifest.write_text(KILL_MANIFEST)
    return inp, manifest


@pytest.fixture(scope="module")
def baseline(kill_input, tmp_path_factory) -> Path:
    """An uninterrupted run over the kill input."""
    inp, manifest = kill_input
    out = tmp_path_factory.mktemp("baseline") / "out"
    run_ok(["run", "--input", str(inp), "--output", str(out), "--manifest", str(manifest), "--num-cpus", "2"],
           out.parent / "run.log")
    return out


def _parts(out: Path) -> int:
    try:
        return len(list((out / "audit" / "parts").glob("sources-*.parquet")))
    except OSError:
        return 0


def _tmp_on_disk(out: Path) -> bool:
    try:
        return any(p.name.endswith(".tmp") for d in (out / "shards", out / "audit" / "parts") if d.is_dir()
                   for p in d.iterdir())
    except OSError:
        return False


def test_kill_9_at_any_point_then_rerun_gives_the_uninterrupted_result(kill_input, baseline, tmp_path):
    inp, manifest = kill_input
    out = tmp_path / "out"
    args = ["run", "--input", str(inp), "--output", str(out), "--manifest", str(manifest), "--num-cpus", "2"]
    n_sources = 5  # one sources part per source (commit_every_sources: 1)
    t_start = [0.0]
    start_parts = [0]
    # Kill points, one per run, each in the same output directory (every run resumes the one before):
    kills = [
        ("while Ray starts (1.5 s in)", lambda: time.monotonic() - t_start[0] > 1.5),
        ("right after the first commit", lambda: _parts(out) >= 1),
        ("mid-commit (a .tmp on disk), or right after the next commit",
         lambda: _tmp_on_disk(out) or _parts(out) > start_parts[0]),
        ("after the last commit, while the index is built", lambda: _parts(out) >= n_sources),
    ]
    hit = []
    for what, trigger in kills:
        t_start[0], start_parts[0] = time.monotonic(), _parts(out)
        if kill_when(args, tmp_path / "runs.log", trigger, timeout_s=300, poll_s=0.005):
            hit.append((what, _parts(out)))
    parts_at_kill = [n for _, n in hit]
    assert len(hit) >= 3, f"only {hit} were killed"
    assert any(0 < n < n_sources for n in parts_at_kill), hit  # at least one kill between commits

    text = run_ok(args, tmp_path / "final.log")
    assert "already done" in text
    index = check_output_dir(out)
    expected = check_output_dir(baseline)
    assert sorted(index["key"]) == sorted(expected["key"])
    assert span_table(out) == span_table(baseline)
    assert len(pd.read_parquet(out / "audit" / "sources.parquet")) == n_sources


# ---------------------------------------------------------------------------------------------------
# Workers that die, stages that raise or hang, in a real run

def _faults_manifest(path: Path, model_stage: dict) -> Path:
    m = {
        "name": "faults",
        "description": "probe, scenes, the default manifest's first model stage, write; short limits",
        "video": {"preset": "ultrafast"},
        "output": {"commit_every_sources": 1},
        "stages": [
            {"name": "probe", "params": {"min_duration_s": 1.0}, "resources": {"num_cpus": 0.25, "batch_size": 1, "timeout_s": 5}},
            {"name": "scenes", "params": {"min_s": 1.0}, "resources": {"num_cpus": 0.5, "batch_size": 1, "timeout_s": 120}},
            {"name": model_stage["name"], "params": model_stage.get("params") or {},
             "resources": {"num_cpus": 0.5, "batch_size": 1, "concurrency": 1, "timeout_s": 15}},
            {"name": "write", "params": {}, "resources": {"num_cpus": 0.5, "batch_size": 1, "timeout_s": 10}},
        ],
    }
    path.write_text(yaml.safe_dump(m, sort_keys=False))
    return path


def test_dying_workers_raising_and_hanging_stages_become_reasons(kill_input, baseline, tmp_path):
    from stages import stage_class

    default = yaml.safe_load((ROOT / "manifests" / "default.yaml").read_text())
    model = next((s for s in default["stages"] if s.get("enabled", True) and stage_class(s["name"]).uses_models), None)
    assert model is not None, "the default manifest has no model stage"
    ms = model["name"]
    inp = tmp_path / "in"
    inp.mkdir()
    for name in ("A1_hdtf_bob_menendez_talking_8s.mp4", "A3_retalk_man_suit_talking_6s.mp4",
                 "C1_documentary_6shots_anamorphic_25s.mp4"):
        os.symlink(FOOTAGE / name, inp / name)
    (inp / "empty.mp4").write_bytes(b"")
    faults = ";".join([
        "probe:hang:empty",                  # a task stage stuck in Python (SIGALRM)      -> timeout:probe
        "scenes:kill:A3_retalk",             # a clip that kills its task worker every time -> error:scenes
        "scenes:kill_once:C1_doc",           # a worker killed once: Ray retries            -> C1 as usual
        f"{ms}:kill_once:C1_doc*_0001",      # an actor killed once: restarted, retried     -> its usual result
        f"{ms}:raise:C1_doc*_0002",          # the stage raises on one clip                 -> error:<model>
        f"{ms}:hang:C1_doc*_0004",           # an actor stuck in Python (watchdog)          -> timeout:<model>
        "write:hang_native:A1_hdtf",         # a worker stuck in C: killed, the retry rejects -> timeout:write
    ])
    fdir = tmp_path / "markers"
    fdir.mkdir()
    out = tmp_path / "out"
    manifest = _faults_manifest(tmp_path / "faults.yaml", model)
    run_ok(["run", "--input", str(inp), "--output", str(out), "--manifest", str(manifest), "--num-cpus", "2"],
           tmp_path / "run.log", env=cli_env(CURATION_FAULTS=faults, CURATION_FAULTS_DIR=str(fdir)))
    check_output_dir(out)
    clips = read_clips(out).set_index("key")
    by = lambda pat: clips[clips.index.str.contains(pat)]  # noqa: E731

    def one(pat):
        rows = by(pat)
        assert len(rows) == 1, (pat, rows[["status", "reason"]])
        return rows.iloc[0]

    assert one("empty").reason == "timeout:probe"
    a3 = one("A3_retalk")
    assert (a3.stage, a3.reason) == ("scenes", "error:scenes") and "died 2 times" in a3.message
    a1 = one("A1_hdtf")
    assert (a1.stage, a1.reason) == ("write", "timeout:write") and "worker killed" in a1.message
    # C1: cut exactly as in the run without faults (the scenes worker died once and was retried)
    c1 = by("C1_doc")
    base = read_clips(baseline)
    base_c1 = base[base["key"].str.contains("C1_doc")]
    assert sorted(zip(c1["start_s"].round(4), c1["end_s"].round(4))) == \
        sorted(zip(base_c1["start_s"].round(4), base_c1["end_s"].round(4)))
    assert len(c1) == 6
    r = {k.rsplit("_", 1)[-1]: row for k, row in c1.iterrows()}
    assert (r["0002"].reason, r["0002"].stage) == (f"error:{ms}", ms) and "injected fault" in r["0002"].message
    assert r["0004"].reason == f"timeout:{ms}" and "longer than 15 s" in r["0004"].message
    for n in ("0000", "0001", "0003", "0005"):  # untouched, or retried after a kill: a normal decision
        assert not str(r[n].reason).startswith(("error:", "timeout:")), (n, r[n].reason, r[n].message)
    assert (fdir / f"fault-{ms}-{r['0001'].name}").exists()  # the kill_once fault did fire
    sources = pd.read_parquet(out / "audit" / "sources.parquet")
    assert len(sources) == 4
    funnel = json.loads((out / "audit" / "funnel.json").read_text())
    assert {s["stage"] for s in funnel["stages"]} == {"probe", "scenes", ms, "write"}


# ---------------------------------------------------------------------------------------------------
# The bad-input corpus

@pytest.fixture(scope="module")
def corpus_run(tmp_path_factory):
    d = tmp_path_factory.mktemp("corpus")
    inp = d / "in"
    cases = make_corpus(inp)
    manifest = corpus_manifest(d / "corpus.yaml")
    work, scratch = d / "cwd", d / "tmp"
    work.mkdir()
    scratch.mkdir()
    before = tree_snapshot(inp)
    out = d / "out"
    # TMPDIR: the run's own scratch files go where they can be checked (Ray's session stays in /tmp/ray)
    env = cli_env(TMPDIR=str(scratch), RAY_TMPDIR="/tmp")
    t0 = time.monotonic()
    run_ok(["run", "--input", str(inp), "--output", str(out), "--manifest", str(manifest), "--num-cpus", "2"],
           d / "run.log", env=env, cwd=work)
    return {"cases": cases, "input": inp, "out": out, "before": before, "cwd": work, "scratch": scratch,
            "wall_s": time.monotonic() - t0}


def test_corpus_has_the_kinds_the_issue_lists(corpus_run):
    cases = corpus_run["cases"]
    assert len(cases) >= 30 and len({c.name for c in cases}) == len(cases)
    kinds = " ".join(c.kind for c in cases).lower()
    for word in ("empty", "truncated", "random", "text", "audio only", "video only", "zero duration", "1x1",
                 "8k", "variable frame rate", "rotated 90", "rotated 180", "rotated 270", "hevc", "vp9", "mjpeg",
                 "prores", "8 khz", "48 khz 6-channel", "declared duration", "spaces", "quotes", "newline",
                 "non-ascii", "not valid utf-8", "symlink", "mode 000", "directory", "fifo"):
        assert word in kinds, word


def test_every_bad_input_is_a_reason_or_a_clip(corpus_run):
    out = corpus_run["out"]
    clips = read_clips(out)
    sources = pd.read_parquet(out / "audit" / "sources.parquet")
    inp = corpus_run["input"]
    assert len(sources) == len(corpus_run["cases"])
    assert not clips["reason"].fillna("").str.startswith("error:").any(), \
        clips.loc[clips["reason"].fillna("").str.startswith("error:"), ["source", "reason", "message"]]
    for c in corpus_run["cases"]:
        rows = rows_of(clips, str(inp / c.name))
        assert len(rows), f"{c.name!r} has no audit row"
        if c.expect == "kept":
            assert (rows["status"] == "kept").all() and (rows["clip_index"] >= 0).all(), \
                (c.name, rows[["reason", "message"]].to_dict("records"))
        else:
            assert (rows["status"] == "rejected").all() and set(rows["reason"]) == {c.expect}, \
                (c.name, c.expect, rows[["reason", "message"]].to_dict("records"))
            assert rows["message"].notna().all()


def test_kept_clips_of_odd_inputs_are_correct(corpus_run, tmp_path):
    out = corpus_run["out"]
    index = check_output_dir(out)
    from curation.engine.pathnames import as_text

    cases = {as_text(str(corpus_run["input"] / c.name)): c for c in corpus_run["cases"]}
    samples = {}
    for tar in sorted((out / "shards").glob("*.tar")):
        for s in wds.WebDataset(str(tar), shardshuffle=False):
            samples[s["__key__"]] = s
    assert len(index) >= 30
    for row in index.itertuples():
        c = cases[row.source]
        s = samples[row.key]
        meta = json.loads(s["json"])
        n = meta["n_frames"]
        assert row.end_s <= SECONDS + 0.05 and n == round((row.end_s - row.start_s) * 25)
        (tmp_path / "c.mp4").write_bytes(s["mp4"])
        (tmp_path / "c.wav").write_bytes(s["wav"])
        streams = ffprobe_streams(tmp_path / "c.mp4")
        v = next(x for x in streams if x["codec_type"] == "video")
        a = next(x for x in streams if x["codec_type"] == "audio")
        assert v["codec_name"] == "h264" and v["avg_frame_rate"] == "25/1" and int(v["nb_frames"]) == n, c.name
        assert (v["width"], v["height"]) == (c.size or (64, 48)), (c.name, v["width"], v["height"])
        assert not (v.get("side_data_list") or v.get("tags", {}).get("rotate")), c.name  # written upright
        assert int(a["sample_rate"]) == 16000 and a["channels"] == 1
        assert float(a["duration"]) == pytest.approx(n / 25, abs=0.03), c.name  # the mp4's audio: all of it
        w = ffprobe_streams(tmp_path / "c.wav")[0]
        assert int(w["sample_rate"]) == 16000 and w["channels"] == 1
        assert float(w["duration"]) == pytest.approx(n / 25, abs=0.02), c.name


def test_nothing_is_written_outside_the_output_directory(corpus_run):
    assert tree_snapshot(corpus_run["input"]) == corpus_run["before"]
    assert not list(corpus_run["cwd"].iterdir())
    assert not list(corpus_run["scratch"].iterdir()), list(corpus_run["scratch"].iterdir())
    top = {p.name for p in corpus_run["out"].iterdir()}
    assert top == {"shards", "audit", "index.parquet", "manifest.yaml", "logs"}  # logs/run.log: the libraries' lines
    assert not [p for d in (corpus_run["input"].parent, corpus_run["cwd"]) for p in d.rglob("pwned")]


def test_terminal_shows_progress_and_the_libraries_log_to_a_file(corpus_run):
    """What `curation run` printed (run_ok's log is its stdout and stderr): our own lines only, progress among
    them; Ray's and the codecs' lines are in DIR/logs/run.log."""
    term = (corpus_run["out"].parent / "run.log").read_text(errors="replace").splitlines()
    progress = [ln for ln in term if ln.startswith(("progress:", "done:"))]
    assert len(progress) >= 2 and "ETA" in progress[0], term[:10]
    assert progress[-1].startswith("done:") and f"sources {len(corpus_run['cases'])}/" in progress[-1]
    assert len(term) < 40, "\n".join(term)
    for noise in ("INFO", "WARNING", "core_worker", "logging_progress", "(pid=", "Deprecat"):
        assert not [ln for ln in term if noise in ln], noise
    log = (corpus_run["out"] / "logs" / "run.log").read_text(errors="replace")
    assert "Started a local Ray instance" in log and "logging_progress" in log
