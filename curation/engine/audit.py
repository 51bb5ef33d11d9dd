"""Audit: consolidate the commit log into the audit tables, the index and the funnel.

The funnel is derived from the clip rows alone (every candidate clip records which stage rejected it and
the wall/CPU seconds each stage spent on it), so it is always consistent with clips.parquet, also after a
resumed or interrupted run."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from curation.engine.columns import integer_columns
from curation.engine.output import OutputDir

INDEX_COLUMNS = ["key", "shard", "source", "start_s", "end_s", "duration_s", "width", "height", "fps",
                 "n_frames", "audio_shift_frames"]
NON_SCORE = set(INDEX_COLUMNS) | {"source_id", "clip_index", "status", "stage", "reason", "message",
                                  "would_reject", "source_fps", "source_bytes", "audio_path_bytes", "record_data"}


def score_columns(clips: pd.DataFrame) -> list[str]:
    return [c for c in clips.columns if c not in NON_SCORE and not c.startswith(("wall_s__", "cpu_s__", "node__", "worker__"))]


def funnel(clips: pd.DataFrame, sources: pd.DataFrame, stage_names: list[str], runs: list[dict]) -> dict:
    """Per stage: items and seconds in/out (sources for source-level stages, clips after scenes), wall and
    CPU seconds, and per-reason rejection counts; in a score-only run also what thresholds would drop."""
    stages = []
    if clips.empty:
        return {"stages": [], "totals": {}, "runs": runs}
    is_clip = clips["clip_index"].notna()  # null: a source-level row
    dur = clips["duration_s"].fillna(0.0).astype(float)
    order = {s: i for i, s in enumerate(stage_names)}
    rej_at = clips["stage"].map(order).where(clips["status"] == "rejected")  # NaN: not rejected
    src_secs = sources["probe_duration_s"].fillna(0.0).astype(float) if len(sources) else pd.Series(dtype=float)
    for i, name in enumerate(stage_names):
        alive_before = rej_at.isna() | (rej_at >= i)
        alive_after = rej_at.isna() | (rej_at > i)
        if name == "probe":  # sources in, sources out
            passed = ~sources["stage"].eq("probe")
            n_in, s_in = int(len(sources)), float(src_secs.sum())
            n_out, s_out = int(passed.sum()), float(src_secs[passed].sum())
        elif name == "scenes":  # sources that passed probe in, candidate clips that passed the shot filter out
            passed_probe = ~sources["stage"].eq("probe")
            n_in, s_in = int(passed_probe.sum()), float(src_secs[passed_probe].sum())
            out_mask = is_clip & alive_after
            n_out, s_out = int(out_mask.sum()), float(dur[out_mask].sum())
        else:
            n_in = int((is_clip & alive_before).sum())
            s_in = float(dur[is_clip & alive_before].sum())
            out_mask = is_clip & alive_after
            n_out, s_out = int(out_mask.sum()), float(dur[out_mask].sum())
        rejected = clips[clips["stage"].eq(name) & clips["status"].eq("rejected")]
        wall = float(clips.get(f"wall_s__{name}", pd.Series(dtype=float)).fillna(0).sum())
        cpu = float(clips.get(f"cpu_s__{name}", pd.Series(dtype=float)).fillna(0).sum())
        would = {}
        if "would_reject" in clips:
            for v in clips["would_reject"].dropna():
                for item in str(v).split(";"):
                    st, _, reason = item.partition(":")
                    if st == name:
                        would[reason] = would.get(reason, 0) + 1
        stages.append({
            "stage": name, "unit": {"probe": "sources", "scenes": "sources→clips"}.get(name, "clips"),
            "in": n_in, "out": n_out, "seconds_in": s_in, "seconds_out": s_out,
            "rejected": {str(k): int(v) for k, v in rejected["reason"].value_counts().items()},
            "would_reject": would, "wall_s": wall, "cpu_s": cpu,
            "cpu_s_per_footage_s": cpu / s_in if s_in > 0 else None,
        })
    kept = clips[clips["status"] == "kept"]
    totals = {
        "sources": int(len(sources)),
        "sources_rejected": int((sources["status"] == "rejected").sum()) if len(sources) else 0,
        "source_seconds": float(sources["probe_duration_s"].fillna(0).sum()) if len(sources) else 0.0,
        "candidate_clips": int(is_clip.sum()),
        "kept_clips": int(len(kept)),
        "kept_seconds": float(kept["duration_s"].sum()) if len(kept) else 0.0,
        "wall_s": float(sum(r.get("wall_s", 0.0) for r in runs)),
        "cpu_s": float(sum(s["cpu_s"] for s in stages)),
    }
    totals["kept_hours"] = totals["kept_seconds"] / 3600.0
    totals["source_hours"] = totals["source_seconds"] / 3600.0
    if "tier" in clips and len(kept):  # a `curation select --tiers` output: kept clips and hours per tier
        secs = kept.groupby("tier")["duration_s"].sum()
        totals["tiers"] = {str(t): {"clips": int(n), "seconds": float(secs[t]), "hours": float(secs[t]) / 3600.0}
                           for t, n in kept.groupby("tier").size().items()}
    return {"stages": stages, "totals": totals, "runs": runs}


def read_runs(out: OutputDir) -> list[dict]:
    if not out.store.exists("audit/runs.jsonl"):
        return []
    runs = []
    for line in out.store.read("audit/runs.jsonl").decode("utf-8", "replace").splitlines():
        try:
            runs.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a line cut by a crash
    return runs


def consolidate(root: str | Path, stage_names: list[str]) -> dict:
    """Rebuild index.parquet, audit/clips.parquet, audit/sources.parquet and audit/funnel.json."""
    out = OutputDir(root)
    clips = out.read_parts("clips")
    sources = out.read_parts("sources")
    if not clips.empty:
        clips = clips.sort_values(["source", "clip_index"], kind="stable").reset_index(drop=True)
        cols = [c for c in clips.columns if c not in ("key", "source", "start_s", "end_s", "status", "stage", "reason")]
        clips = clips[["key", "source", "start_s", "end_s", "status", "stage", "reason", *cols]]
    if not sources.empty:
        sources = sources.sort_values("source", kind="stable").reset_index(drop=True)
    clips, sources = integer_columns(clips), integer_columns(sources)
    out.store.write("audit/clips.parquet", _pq(clips))
    out.store.write("audit/sources.parquet", _pq(sources))
    if clips.empty:
        index = pd.DataFrame(columns=INDEX_COLUMNS)
    else:
        kept = clips[(clips["status"] == "kept") & clips["shard"].notna()]
        # source_bytes (a file name that is not UTF-8, curation.engine.pathnames) right after `source`
        cols = [c for c in INDEX_COLUMNS if c in kept]
        if "source_bytes" in kept and kept["source_bytes"].notna().any():
            cols.insert(cols.index("source") + 1, "source_bytes")
        index = integer_columns(kept[cols + score_columns(kept)].reset_index(drop=True))
    out.store.write("index.parquet", _pq(index))
    f = funnel(clips, sources, stage_names, read_runs(out))
    out.store.write("audit/funnel.json", json.dumps(f, indent=2, default=float).encode())
    return f


def _pq(df: pd.DataFrame) -> bytes:
    import io

    buf = io.BytesIO()
    df.to_parquet(buf, index=False)
    return buf.getvalue()
