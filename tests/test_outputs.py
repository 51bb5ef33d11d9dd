"""An output directory tells the truth: its run status from explicit run records (so a copy reports as the
original), index.parquet's types, and every shared field of a clip's json and its index row equal."""

from __future__ import annotations

import json
import os
import re
import shutil
import tarfile
import time

import numpy as np
import pandas as pd
from conftest import run_cli


def _report(d) -> tuple[str, str, dict]:
    p = run_cli("report", str(d), "--no-html")
    status = [ln for ln in p.stdout.splitlines() if ln.startswith("status:")]
    assert len(status) == 1, p.stdout
    table = [ln for ln in p.stdout.splitlines() if not ln.startswith("status:")]
    return status[0], "\n".join(table), json.loads((d / "audit" / "funnel.json").read_text())


def test_copied_output_reports_as_the_original(pipeline_output, tmp_path):
    status, table, funnel = _report(pipeline_output)
    assert status.startswith("status: finished"), status
    runs = [json.loads(x) for x in (pipeline_output / "audit" / "runs.jsonl").read_text().splitlines()]
    starts = [json.loads(x) for x in (pipeline_output / "audit" / "starts.jsonl").read_text().splitlines()]
    assert runs[-1]["run_id"] == starts[-1]["run_id"] and runs[-1]["ended"] >= runs[-1]["started"]
    assert runs[-1]["last_part"] == max(int(re.findall(r"\d+", p.name)[0])
                                        for p in (pipeline_output / "audit" / "parts").glob("sources-*.parquet"))

    time.sleep(1.1)  # the copy's files are all newer than the run's end
    copy = tmp_path / "copy"
    assert os.spawnvp(os.P_WAIT, "cp", ["cp", "-r", str(pipeline_output), str(copy)]) == 0
    newest = max(p.stat().st_mtime for p in copy.rglob("*"))
    assert newest > runs[-1]["ended"] + 1
    c_status, c_table, c_funnel = _report(copy)
    assert c_status == status
    assert c_table == table.replace(str(pipeline_output), str(copy))
    assert c_funnel["totals"] == funnel["totals"] and c_funnel["stages"] == funnel["stages"]
    html = run_cli("report", str(copy))
    assert "report:" in html.stdout
    assert 'id="run-status">finished' in (copy / "report.html").read_text(encoding="utf-8")

    # A run that started and has not recorded its end: in progress or interrupted, in the copy too
    with open(copy / "audit" / "starts.jsonl", "a") as f:
        f.write(json.dumps({"run_id": "later", "started": time.time()}) + "\n")
    s2, _, _ = _report(copy)
    assert s2.startswith("status: in progress or interrupted") and "has not recorded its end" in s2


INT_COLUMNS = ("width", "height", "n_frames", "audio_shift_frames")


def test_index_types_and_samples_agree(pipeline_output):
    index = pd.read_parquet(pipeline_output / "index.parquet")
    assert len(index) > 0
    for c in INT_COLUMNS:
        assert index[c].dtype == np.int64, (c, index[c].dtype)
    assert index["fps"].dtype == np.float64  # a rate (29.97 is one): float, as in the json
    for c in ("start_s", "end_s", "duration_s"):
        assert index[c].dtype == np.float64
    # meta.csv-style text shows integers as integers
    assert not any(s.endswith(".0") for s in index[["width", "height", "n_frames"]].astype(str).to_numpy().ravel())
    clips = pd.read_parquet(pipeline_output / "audit" / "clips.parquet")
    for c in INT_COLUMNS:
        assert str(clips[c].dtype) in ("int64", "Int64"), (c, clips[c].dtype)

    rows = index.set_index("key")
    seen = 0
    for shard in sorted(set(index["shard"])):
        with tarfile.open(pipeline_output / "shards" / shard) as tf:
            for m in tf:
                if not m.name.endswith(".json"):
                    continue
                meta = json.loads(tf.extractfile(m).read())
                row = rows.loc[meta["key"]]
                shared = [k for k in meta if k in index.columns and k != "key"]
                assert {"source", "start_s", "end_s", "duration_s", "n_frames", "fps", "width", "height",
                        "audio_shift_frames"} <= set(shared)
                for k in shared:
                    v, want = row[k], meta[k]
                    if want is None:
                        assert pd.isna(v), (meta["key"], k, v)
                    elif isinstance(want, float):
                        assert float(v) == want, (meta["key"], k, v, want)
                    else:
                        assert v == want and type(v.item() if hasattr(v, "item") else v) is type(want), \
                            (meta["key"], k, v, want)
                for k, want in meta["scores"].items():  # every score of the sample is its index column
                    v = row[k]
                    assert (pd.isna(v) if want is None else v == want), (meta["key"], k, v, want)
                seen += 1
    assert seen == len(index)
