"""`curation report DIR` → DIR/report.html: one self-contained page (inline CSS, images as data URIs).

What it shows, all read from the commit log (audit/parts) so a run in progress or interrupted shows what is
committed so far, and a `--score-only` run shows what each threshold would have dropped:
  - the funnel (sources → candidate clips → each stage → kept) in items and hours, as a chart and a table;
    the numbers are those of `curation.engine.audit.funnel` (what audit/funnel.json holds);
  - rejections per stage and reason (counts and hours);
  - for every numeric score a histogram of kept vs rejected clips with the manifest threshold drawn as a line;
  - a contact sheet: a few middle-frame thumbnails per rejection reason and of kept clips, each labelled with
    its source, time span and scores; sources rejected at probe get no thumbnail but are listed;
  - the manifest the directory was made with, the runs' wall time, per-stage CPU-seconds per footage-second.

Charts are matplotlib (Agg) PNGs; thumbnails are one ffmpeg single-frame seek per clip, downscaled to JPEG.
The page's only script checks, on load, that every embedded image decoded (a broken one is a console error)."""

from __future__ import annotations

import base64
import datetime as _dt
import io
import json
import math
import os
import subprocess
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from curation.engine.audit import funnel as compute_funnel
from curation.engine.audit import read_runs, score_columns
from curation.engine.output import PART_RE, OutputDir
from curation.engine import thresholds as decisions_file

TEMPLATE = Path(__file__).resolve().parent / "templates" / "report.html.j2"

KEPT_C, REJ_C, OTHER_C, WOULD_C, WOULD2_C = "#2e7d32", "#c62828", "#9e9e9e", "#ef6c00", "#ffcc80"

# ---------------------------------------------------------------------------------------------------
# Loading


@dataclass
class Threshold:
    """One row of audit/thresholds.json: a check in force on a score."""

    kind: str  # "min", "max" or "max_abs" (the direction)
    value: float
    source: str  # "person.min_face_px": the stage and params key of the bound
    reason: str = ""
    hard: bool = False

    @property
    def label(self) -> str:
        op = {"min": "≥", "max": "≤", "max_abs": "|x| ≤"}[self.kind]
        return f"{op} {self.value:g} ({self.source})"


@dataclass
class RunState:
    root: Path
    clips: pd.DataFrame
    sources: pd.DataFrame
    stages: list[str]
    params: dict[str, dict]
    manifest_text: str
    manifest_name: str
    runs: list[dict]
    funnel: dict
    score_only: bool
    finished: bool
    notes: list[str] = field(default_factory=list)
    # audit/thresholds.json (curation.engine.thresholds): the checks, hard reasons and score columns the
    # stages declared; None for a directory made before it existed (no thresholds are shown then).
    decisions: dict[str, list[dict]] | None = None


def _read_manifest(root: Path) -> tuple[str, list[str], dict[str, dict], str]:
    import yaml

    p = root / "manifest.yaml"
    if not p.exists():
        return "", [], {}, "(no manifest.yaml in this directory)"
    text = p.read_text(encoding="utf-8", errors="replace")
    try:
        m = yaml.safe_load(text) or {}
    except yaml.YAMLError:
        return "", [], {}, text
    stages = [s for s in m.get("stages", []) if isinstance(s, dict) and s.get("enabled", True)]
    return (str(m.get("name", "")), [str(s["name"]) for s in stages if "name" in s],
            {str(s["name"]): dict(s.get("params") or {}) for s in stages if "name" in s}, text)


def load(root: str | os.PathLike) -> RunState:
    """Everything the report shows, from the committed parts only (never the files a running pipeline is
    still writing: *.tmp, a clips part without its sources part)."""
    root = Path(root)
    out = OutputDir(root)
    if not out.parts.is_dir():
        raise FileNotFoundError(f"{root} is not an output directory of `curation run` (no audit/parts)")
    clips = out.read_parts("clips")
    sources = out.read_parts("sources")
    if not clips.empty:  # the order consolidate uses
        clips = clips.sort_values(["source", "clip_index"], kind="stable").reset_index(drop=True)
    if not sources.empty:
        sources = sources.sort_values("source", kind="stable").reset_index(drop=True)
    name, stages, params, mtext = _read_manifest(root)
    if not stages and not clips.empty:  # no manifest: the stages that rejected something, in first-seen order
        stages = list(dict.fromkeys(clips["stage"].dropna().astype(str)))
    runs = read_runs(out)
    fun = compute_funnel(clips, sources, stages, runs)

    committed = out.committed_parts()
    notes = []
    pending = [p.name for d in (out.shards, out.parts, out.audit, root) if d.is_dir() for p in d.glob("*.tmp")]
    uncommitted = [p.name for p in out.parts.glob("clips-*.parquet")
                   if (m := PART_RE.match(p.name)) and int(m.group(2)) not in set(committed)]
    last_commit = max((os.path.getmtime(out.parts / f"sources-{c:06d}.parquet") for c in committed), default=None)
    finished = bool(runs)
    if runs and last_commit is not None:
        r = runs[-1]
        finished = last_commit <= float(r.get("started", 0)) + float(r.get("wall_s", 0)) + 1.0
    if pending or uncommitted:
        finished = False
        notes.append(f"files of an unfinished commit are present ({len(pending)} temporary, {len(uncommitted)} "
                     "uncommitted parts): a run is in progress or was interrupted; they are not counted")
    if not finished:
        notes.append(f"run in progress or interrupted: this report shows the {len(committed)} committed part(s) "
                     f"({len(sources)} sources); `curation run` again with the same output resumes")
    score_only = any(bool(r.get("score_only")) for r in runs)
    if not clips.empty and "would_reject" in clips and clips["would_reject"].notna().any():
        score_only = True
    if not clips.empty and not runs:  # in progress: a score-only run writes kept clips without shards
        kept = clips[clips["status"] == "kept"]
        score_only = score_only or (len(kept) > 0 and kept["shard"].isna().all())
    decisions = decisions_file.read(out.audit)
    if decisions is None and not clips.empty:
        notes.append("no audit/thresholds.json (a directory made by an older version): thresholds are not shown")
    return RunState(root, clips, sources, stages, params, mtext, name, runs, fun, score_only, finished, notes,
                    decisions)


# ---------------------------------------------------------------------------------------------------
# Scores and thresholds


def _declared(state: RunState, kind: str) -> list[dict]:
    return (state.decisions or {}).get(kind, [])


def numeric_scores(state: RunState) -> list[str]:
    """The numeric score columns: those the stages declared as numbers (audit/thresholds.json), in pipeline
    order, then undeclared score columns whose stored type is numeric."""
    clips = state.clips
    if clips.empty:
        return []
    cols = score_columns(clips)
    declared = {r["score"]: r["type"] for r in _declared(state, "scores")}
    out = [r["score"] for r in _declared(state, "scores") if r["type"] == "number" and r["score"] in cols]
    out = list(dict.fromkeys(out))
    out += [c for c in cols if c not in declared and pd.api.types.is_numeric_dtype(clips[c]) and clips[c].notna().any()]
    return out


def _num(v: Any) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) or abs(f) == float("inf") else None


def thresholds(state: RunState, scores: list[str]) -> tuple[dict[str, list[Threshold]], dict[str, str]]:
    """Per score the checks in force on it, and the stage that records each score: read from
    audit/thresholds.json (scores it does not declare belong to no stage: "other")."""
    found: dict[str, list[Threshold]] = {}
    stage_of: dict[str, str] = {}
    for r in _declared(state, "scores"):
        stage_of.setdefault(r["score"], r["stage"])
    for r in _declared(state, "thresholds"):
        if r["score"] in scores:
            found.setdefault(r["score"], []).append(
                Threshold(r["direction"], float(r["bound"]), f"{r['stage']}.{r['key']}", r["reason"], bool(r["hard"])))
            stage_of.setdefault(r["score"], r["stage"])
    return found, stage_of


def hard_rejection(state: RunState) -> pd.Series:
    """Per clip row: rejected with a hard reason (no threshold's doing: applied in a score-only run too)."""
    clips = state.clips
    hard = {(r["stage"], r["reason"]) for r in _declared(state, "hard_reasons")}
    hard |= {(r["stage"], r["reason"]) for r in _declared(state, "thresholds") if r["hard"]}
    pairs = zip(clips["stage"], clips["reason"]) if "reason" in clips else []
    return pd.Series([(st, rs) in hard for st, rs in pairs], index=clips.index, dtype=bool)


def _fails(values: pd.Series, ths: list[Threshold]) -> pd.Series:
    bad = pd.Series(False, index=values.index)
    for t in ths:
        if t.kind == "min":
            bad |= values < t.value
        elif t.kind == "max":
            bad |= values > t.value
        else:  # max_abs
            bad |= values.abs() > t.value
    return bad


# ---------------------------------------------------------------------------------------------------
# Charts


def _png(fig) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    plt.rcParams.update({"font.size": 9, "axes.spines.top": False, "axes.spines.right": False})
    return plt


def funnel_steps(state: RunState) -> list[dict]:
    """The funnel as consecutive steps: sources → passed probe → candidate clips → passed each stage → kept.
    Each step: label, unit, n, seconds, and in a score-only run would_n/would_seconds (no threshold applied)."""
    f, clips = state.funnel, state.clips
    tot = f.get("totals", {})
    steps = [{"label": "sources", "unit": "sources", "n": tot.get("sources", 0),
              "seconds": tot.get("source_seconds", 0.0), "key": "totals.sources"}]
    is_clip = clips["clip_index"].notna() if not clips.empty else pd.Series(dtype=bool)
    cand_s = float(clips.loc[is_clip, "duration_s"].fillna(0).sum()) if not clips.empty else 0.0
    by_stage = {s["stage"]: s for s in f.get("stages", [])}
    order = {s: i for i, s in enumerate(state.stages)}
    would_at = _would_stage_index(clips, order) if state.score_only and not clips.empty else None
    rej_at = clips["stage"].map(order).where(clips["status"] == "rejected") if not clips.empty else None

    def would(i):
        if would_at is None:
            return {}
        alive = is_clip & (rej_at.isna() | (rej_at > i)) & (would_at.isna() | (would_at > i))
        return {"would_n": int(alive.sum()), "would_seconds": float(clips.loc[alive, "duration_s"].fillna(0).sum())}

    cand_added = False
    for i, name in enumerate(state.stages):
        s = by_stage.get(name)
        if s is None:
            continue
        if name != "probe" and not cand_added:
            steps.append({"label": "candidate clips", "unit": "clips", "n": tot.get("candidate_clips", 0),
                          "seconds": cand_s, "key": "totals.candidate_clips"})
            cand_added = True
        unit = "sources" if name == "probe" else "clips"
        steps.append({"label": f"after {name}", "unit": unit, "n": s["out"], "seconds": s["seconds_out"],
                      "key": f"stages.{name}.out", **(would(i) if unit == "clips" else {})})
    if not cand_added and tot:
        steps.append({"label": "candidate clips", "unit": "clips", "n": tot.get("candidate_clips", 0),
                      "seconds": cand_s, "key": "totals.candidate_clips"})
    if tot:
        steps.append({"label": "kept", "unit": "clips", "n": tot.get("kept_clips", 0),
                      "seconds": tot.get("kept_seconds", 0.0), "key": "totals.kept_clips",
                      **(would(len(state.stages)) if would_at is not None else {})})
    return steps


def would_items(clips: pd.DataFrame) -> pd.Series:
    """Per clip the list of "stage:reason" a threshold would have applied (empty where none)."""
    if clips.empty or "would_reject" not in clips:
        return pd.Series([[] for _ in range(len(clips))], index=clips.index, dtype=object)
    return clips["would_reject"].map(lambda v: [i for i in v.split(";") if i] if isinstance(v, str) else [])


def _would_stage_index(clips: pd.DataFrame, order: dict[str, int]) -> pd.Series:
    """Per clip the earliest stage (index) whose threshold would have rejected it; NaN if none."""
    def first(v):
        if not isinstance(v, str) or not v:
            return np.nan
        idx = [order.get(item.partition(":")[0], np.nan) for item in v.split(";")]
        idx = [i for i in idx if not (isinstance(i, float) and math.isnan(i))]
        return min(idx) if idx else np.nan

    if "would_reject" not in clips:
        return pd.Series(np.nan, index=clips.index)
    return clips["would_reject"].map(first).astype(float)


def funnel_chart(steps: list[dict], score_only: bool) -> str:
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(11, 0.45 * len(steps) + 1.2), sharey=True)
    labels = [s["label"] for s in steps]
    y = np.arange(len(steps))[::-1]
    colors = ["#455a64" if s["unit"] == "sources" else ("#2e7d32" if s["label"] == "kept" else "#1e88e5")
              for s in steps]
    for ax, field_, title, fmt in ((axes[0], "n", "sources / clips",
                                    lambda v, s: f"{int(v)} {s['unit'] if int(v) != 1 else s['unit'][:-1]}"),
                                   (axes[1], "seconds", "hours of footage", lambda v, s: f"{v / 3600:.4f} h")):
        vals = [s[field_] / (3600.0 if field_ == "seconds" else 1.0) for s in steps]
        ax.barh(y, vals, color=colors, height=0.62, label="passed")
        if score_only:
            wv = [s.get("would_" + ("n" if field_ == "n" else "seconds")) for s in steps]
            wy = [yy for yy, w in zip(y, wv) if w is not None]
            wv = [w / (3600.0 if field_ == "seconds" else 1.0) for w in wv if w is not None]
            ax.barh(wy, wv, color=WOULD_C, height=0.28, label="would pass the thresholds")
        vmax = max(vals + [1e-9])
        for yy, v, s in zip(y, vals, steps):
            ax.text(v + vmax * 0.01, yy, fmt(v * (3600.0 if field_ == "seconds" else 1.0), s), va="center",
                    fontsize=8)
        ax.set_xlim(0, vmax * 1.3)
        ax.set_title(title)
        ax.set_yticks(y, labels)
        if score_only:
            ax.legend(loc="lower right", fontsize=7, frameon=False)
    fig.tight_layout()
    return _png(fig)


def rejection_chart(rows: list[dict], stages: list[str]) -> str | None:
    if not rows:
        return None
    plt = _plt()
    palette = ["#455a64", "#1e88e5", "#5e35b1", "#00897b", "#6d4c41", "#3949ab", "#8e24aa", "#546e7a"]
    stage_color = {s: palette[i % len(palette)] for i, s in enumerate(stages)}
    fig, ax = plt.subplots(figsize=(7, 0.32 * len(rows) + 0.9))
    y = np.arange(len(rows))[::-1]
    ax.barh(y, [r["n"] for r in rows], height=0.65,
            color=[WOULD_C if r["would"] else stage_color.get(r["stage"], "#777") for r in rows])
    for yy, r in zip(y, rows):
        ax.text(r["n"], yy, f" {r['n']}", va="center", fontsize=8)
    ax.set_yticks(y, [f"{r['stage']}: {r['reason']}" + (" (would)" if r["would"] else "") for r in rows])
    ax.set_xlabel("clips (sources at probe)")
    ax.set_xlim(0, max(r["n"] for r in rows) * 1.15 + 0.5)
    fig.tight_layout()
    return _png(fig)


def cpu_chart(fun: dict) -> str | None:
    st = [s for s in fun.get("stages", []) if s.get("cpu_s_per_footage_s") is not None]
    if not st:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.5, 0.35 * len(st) + 0.9))
    y = np.arange(len(st))[::-1]
    vals = [s["cpu_s_per_footage_s"] for s in st]
    ax.barh(y, vals, color="#6d4c41", height=0.6)
    for yy, v in zip(y, vals):
        ax.text(v, yy, f" {v:.3f}", va="center", fontsize=8)
    ax.set_yticks(y, [s["stage"] for s in st])
    ax.set_xlabel("CPU-seconds per footage-second")
    ax.set_xlim(0, max(vals) * 1.2 + 1e-9)
    fig.tight_layout()
    return _png(fig)


def score_histogram(state: RunState, score: str, ths: list[Threshold]) -> tuple[str, dict[str, int]]:
    """The histogram as a PNG data URI, and the clip count of each group drawn."""
    plt = _plt()
    clips = state.clips
    v = pd.to_numeric(clips[score], errors="coerce")
    ok = v.notna() & np.isfinite(v)
    status = clips["status"].astype(str)
    would = clips["would_reject"].notna() if "would_reject" in clips else pd.Series(False, index=clips.index)
    # Rejected by a threshold and failing this score's (also when another check rejected the clip first).
    # A hard rejection (audit/thresholds.json: hard reasons, hard checks) is no threshold's doing.
    soft = clips["reason"].notna() & ~hard_rejection(state)
    by_this = status.eq("rejected") & soft & (_fails(v, ths) if ths else False)
    would_this = would & ~by_this & (_fails(v, ths) if ths else False)
    groups = [  # score-only: `would` marks clips some threshold would have dropped
        ("kept", ok & status.ne("rejected") & ~would, KEPT_C),
        ("would be rejected, fails this threshold", ok & would_this, WOULD_C),
        ("would be rejected by another threshold", ok & would & ~would_this & ~by_this, WOULD2_C),
        ("rejected, fails this threshold", ok & by_this, REJ_C),
        ("rejected by another check", ok & status.eq("rejected") & ~by_this & ~would, OTHER_C),
    ]
    groups = [(n, m, c) for n, m, c in groups if m.any()]
    fig, ax = plt.subplots(figsize=(3.9, 2.5))
    allv = v[ok].to_numpy(dtype=float)
    lo, hi = (float(allv.min()), float(allv.max())) if len(allv) else (0.0, 1.0)
    for t in ths:
        for x in ([t.value, -t.value] if t.kind == "max_abs" else [t.value]):
            if math.isfinite(x):
                lo, hi = min(lo, x), max(hi, x)
    if hi <= lo:
        lo, hi = lo - 0.5, hi + 0.5
    bins = np.linspace(lo, hi, min(30, max(8, int(np.sqrt(max(len(allv), 1))) * 3)) + 1)
    if groups:
        ax.hist([v[m].to_numpy(dtype=float) for _, m, _ in groups], bins=bins, histtype="barstacked",
                color=[c for _, _, c in groups], label=[f"{n} ({int(m.sum())})" for n, m, _ in groups])
    for t in ths:
        for x in ([t.value, -t.value] if t.kind == "max_abs" else [t.value]):
            if math.isfinite(x):
                ax.axvline(x, color="black", linestyle="--", linewidth=1.3)
                ax.annotate(f"{t.label.split(' (')[0]}", (x, 1.0), xycoords=("data", "axes fraction"),
                            xytext=(0, 2), textcoords="offset points", ha="center", va="bottom", fontsize=7)
    pad = (hi - lo) * 0.04
    ax.set_xlim(lo - pad, hi + pad)
    ax.set_title(score, fontsize=9, family="monospace", pad=12 if ths else 4)
    ax.set_ylabel("clips")
    ax.yaxis.get_major_locator().set_params(integer=True)
    from matplotlib.ticker import FuncFormatter, MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(nbins=6))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:.3g}"))
    if groups:
        ax.legend(fontsize=6, frameon=False, loc="upper left", bbox_to_anchor=(0, -0.18), ncol=2)
    return _png(fig), {n: int(m.sum()) for n, m, _ in groups}


# ---------------------------------------------------------------------------------------------------
# Thumbnails


def thumbnail(source: str, t: float, height: int = 180, timeout: float = 30.0) -> str | None:
    """One frame at `t` seconds, square pixels, `height` px high, as a JPEG data URI; None if it fails."""
    from curation.media.ffmpeg import FFMPEG, SQUARE_PIXELS, local_path

    try:
        src = local_path(source)
    except Exception:
        return None
    cmd = [FFMPEG, "-nostdin", "-v", "error", "-ss", f"{max(0.0, t):.3f}", "-i", src, "-frames:v", "1",
           "-vf", f"{SQUARE_PIXELS},scale=-2:'min({height},ih)'", "-f", "image2", "-c:v", "mjpeg", "-q:v", "5",
           "pipe:1"]
    try:
        p = subprocess.run(cmd, capture_output=True, timeout=timeout)
    except (subprocess.TimeoutExpired, OSError):
        return None
    if p.returncode != 0 or not p.stdout.startswith(b"\xff\xd8"):
        return None
    return "data:image/jpeg;base64," + base64.b64encode(p.stdout).decode()


def _fmt(v: Any) -> str:
    f = _num(v)
    if f is None:
        return str(v)
    if f == int(f) and abs(f) < 1e6:
        return str(int(f))
    return f"{f:.3g}" if abs(f) < 1000 else f"{f:.0f}"


def _spread(df: pd.DataFrame, n: int) -> pd.DataFrame:
    """Up to n rows, one per source first (round robin), so a sheet shows different footage."""
    if len(df) <= n:
        return df
    ranks = df.groupby("source", sort=False).cumcount()
    return df.assign(_r=ranks.to_numpy()).sort_values(["_r"], kind="stable").head(n).drop(columns="_r")


def contact_sheet(state: RunState, scores: list[str], ths: dict[str, list[Threshold]], per_reason: int,
                  kept_n: int) -> tuple[list[dict], list[dict]]:
    """Groups of cards (rejection reasons, would-reject reasons in a score-only run, kept) and the list of
    sources rejected at probe (no thumbnail)."""
    clips = state.clips
    if clips.empty:
        return [], []
    src_dur = dict(zip(state.sources.get("source", []), state.sources.get("probe_duration_s", [])))
    order = {s: i for i, s in enumerate(state.stages)}
    groups: list[dict] = []
    rej = clips[clips["status"].eq("rejected")]
    probe_rej = rej[rej["stage"].eq("probe")]
    rej = rej[~rej["stage"].eq("probe")]
    pairs = sorted({(str(s), str(r)) for s, r in zip(rej["stage"], rej["reason"])},
                   key=lambda sr: (order.get(sr[0], 99), sr[1]))
    for stage, reason in pairs:
        sel = rej[rej["stage"].eq(stage) & rej["reason"].eq(reason)]
        groups.append({"title": f"rejected at {stage}: {reason}", "kind": "rejected", "n": len(sel),
                       "rows": _spread(sel, per_reason)})
    wi = would_items(clips)  # a clip shows under every threshold that would have dropped it
    for it in sorted({i for xs in wi for i in xs}, key=lambda it: (order.get(it.partition(":")[0], 99), it)):
        sel = clips[wi.map(lambda xs, it=it: it in xs)]
        groups.append({"title": f"would be rejected at {it.replace(':', ': ', 1)}", "kind": "would",
                       "n": len(sel), "rows": _spread(sel, per_reason)})
    kept = clips[clips["status"].eq("kept") & (clips["would_reject"].isna() if "would_reject" in clips else True)]
    groups.append({"title": "kept" + (" (passes every threshold)" if state.score_only else ""), "kind": "kept",
                   "n": len(kept), "rows": _spread(kept, kept_n)})

    jobs = []
    for g in groups:
        for _, r in g["rows"].iterrows():
            if pd.notna(r.get("start_s")) and pd.notna(r.get("end_s")):
                t = (float(r["start_s"]) + float(r["end_s"])) / 2
            else:
                t = float(src_dur.get(r["source"]) or 0.0) / 2
            jobs.append((g, r, t))
    with ThreadPoolExecutor(max_workers=max(1, min(4, os.cpu_count() or 1))) as ex:
        imgs = list(ex.map(lambda j: thumbnail(str(j[1]["source"]), j[2]), jobs))
    for g in groups:
        g["cards"] = []
    for (g, r, t), img in zip(jobs, imgs):
        g["cards"].append(_card(r, img, t, scores, ths))
    for g in groups:
        del g["rows"]
    listed = [{"source": str(r["source"]), "name": Path(str(r["source"])).name, "reason": r.get("reason"),
               "message": r.get("message") if pd.notna(r.get("message")) else "",
               "duration": _fmt(src_dur.get(r["source"])) if pd.notna(src_dur.get(r["source"])) else "?"}
              for _, r in probe_rej.iterrows()]
    return groups, listed


def _card(r: pd.Series, img: str | None, t: float, scores: list[str], ths: dict[str, list[Threshold]]) -> dict:
    if pd.notna(r.get("start_s")) and pd.notna(r.get("end_s")):
        span = f"{float(r['start_s']):.2f}–{float(r['end_s']):.2f} s ({float(r['end_s']) - float(r['start_s']):.1f} s)"
    else:
        span = f"whole source (frame at {t:.1f} s)"
    sc = []
    for s in scores:
        v = _num(r.get(s))
        if v is None or (isinstance(r.get(s), float) and math.isnan(r.get(s))):
            continue
        bad = bool(ths.get(s)) and bool(_fails(pd.Series([v]), ths[s]).iloc[0])
        sc.append({"name": s, "value": _fmt(v), "bad": bad, "th": bool(ths.get(s))})
    sc.sort(key=lambda x: (not x["bad"], not x["th"]))
    msg = r.get("message")
    return {"img": img, "name": Path(str(r["source"])).name, "source": str(r["source"]), "span": span,
            "key": str(r.get("key")), "reason": r.get("reason") if pd.notna(r.get("reason")) else None,
            "would": r.get("would_reject") if "would_reject" in r and pd.notna(r.get("would_reject")) else None,
            "message": msg if isinstance(msg, str) else None, "scores": sc}


# ---------------------------------------------------------------------------------------------------
# Page


def _hms(s: float | None) -> str:
    s = float(s or 0.0)
    return f"{s / 3600:.2f} h" if s >= 3600 else (f"{s / 60:.1f} min" if s >= 60 else f"{s:.1f} s")


def _when(ts: float | None) -> str:
    if not ts:
        return "?"
    return _dt.datetime.fromtimestamp(float(ts), tz=_dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def rejection_rows(state: RunState) -> list[dict]:
    """Per stage and reason: clips (sources at probe) and hours, from funnel `rejected`/`would_reject`."""
    clips, rows = state.clips, []
    src_dur = dict(zip(state.sources.get("source", []), state.sources.get("probe_duration_s", [])))
    for s in state.funnel.get("stages", []):
        for reason, n in sorted(s["rejected"].items(), key=lambda kv: -kv[1]):
            sel = clips[clips["stage"].eq(s["stage"]) & clips["reason"].eq(reason) & clips["status"].eq("rejected")]
            secs = sum(float(d) if pd.notna(d) and pd.notna(ci) else float(src_dur.get(src) or 0.0)
                       for d, ci, src in zip(sel["duration_s"], sel["clip_index"], sel["source"]))
            ex = sel["message"].dropna().astype(str)
            rows.append({"stage": s["stage"], "reason": reason, "n": int(n), "seconds": secs,
                         "unit": "sources" if s["stage"] == "probe" or sel["clip_index"].isna().all() else "clips",
                         "example": ex.iloc[0] if len(ex) else "", "would": False})
        for reason, n in sorted(s.get("would_reject", {}).items(), key=lambda kv: -kv[1]):
            rows.append({"stage": s["stage"], "reason": reason, "n": int(n), "seconds": None, "unit": "clips",
                         "example": "threshold not applied (--score-only)", "would": True})
    if not clips.empty:
        wi = would_items(clips)
        for r in rows:
            if r["would"]:
                sel = clips[wi.map(lambda xs, it=f"{r['stage']}:{r['reason']}": it in xs)]
                r["seconds"] = float(sel["duration_s"].fillna(0).sum())
    return rows


def render(state: RunState, per_reason: int = 4, kept_n: int = 8) -> str:
    import jinja2

    scores = numeric_scores(state)
    ths, stage_of = thresholds(state, scores)
    order = {s: i for i, s in enumerate(state.stages)}
    scores_sorted = sorted(scores, key=lambda s: (order.get(stage_of.get(s, ""), 98), scores.index(s)))
    hist = []
    for s in scores_sorted:
        img, counts = score_histogram(state, s, ths.get(s, []))
        hist.append({"score": s, "stage": stage_of.get(s, "other"), "img": img, "counts": counts,
                     "thresholds": [t.label for t in ths.get(s, [])],
                     "n": int(pd.to_numeric(state.clips[s], errors="coerce").notna().sum())})
    non_numeric = [c for c in (score_columns(state.clips) if not state.clips.empty else []) if c not in scores]
    steps = funnel_steps(state)
    rej_rows = rejection_rows(state)
    groups, probe_listed = contact_sheet(state, scores, ths, per_reason, kept_n)
    tot = state.funnel.get("totals", {})
    runs = [{"started": _when(r.get("started")), "wall": _hms(r.get("wall_s")), "wall_s": r.get("wall_s"),
             "new": r.get("new_sources"), "skipped": r.get("skipped_sources"), "score_only": r.get("score_only"),
             "address": r.get("address"), "argv": " ".join(map(str, r.get("argv", [])))} for r in state.runs]
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATE.parent)),
                             autoescape=jinja2.select_autoescape(["html", "j2"]), undefined=jinja2.StrictUndefined)
    env.filters["hours"] = lambda s: f"{float(s or 0) / 3600:.4f}"
    env.filters["hms"] = _hms
    env.filters["num"] = _fmt
    env.filters["f3"] = lambda v: "-" if v is None else f"{float(v):.3f}"
    env.filters["f1"] = lambda v: "-" if v is None else f"{float(v):.1f}"
    funnel_img = funnel_chart(steps, state.score_only) if state.funnel.get("stages") else None
    rej_img, cpu = rejection_chart(rej_rows, state.stages), cpu_chart(state.funnel)
    n_imgs = (bool(funnel_img) + bool(rej_img) + bool(cpu) + len(hist)  # what the page must show decoded
              + sum(1 for g in groups for c in g["cards"] if c["img"]))
    return env.get_template(TEMPLATE.name).render(
        title=f"talkcurate report: {state.root.name}", root=str(state.root), manifest_name=state.manifest_name,
        generated=_when(_dt.datetime.now(_dt.timezone.utc).timestamp()), state=state, tot=tot,
        funnel_stages=state.funnel.get("stages", []), steps=steps,
        funnel_img=funnel_img, rej_rows=rej_rows, rej_img=rej_img, cpu_img=cpu, hist=hist,
        non_numeric=non_numeric, groups=groups, probe_listed=probe_listed, runs=runs, n_imgs=n_imgs,
        wall_total=_hms(tot.get("wall_s")) if state.runs else None,
        funnel_json=json.dumps({k: v for k, v in state.funnel.items() if k != "runs"},
                               default=float).replace("</", "<\\/"),
    )


def write_report(root: str | os.PathLike, per_reason: int = 4, kept_n: int = 8) -> Path:
    """Write ROOT/report.html (atomically) and return its path. Reads only committed parts."""
    state = load(root)
    page = render(state, per_reason, kept_n)
    path = Path(root) / "report.html"
    OutputDir(root).write_atomic(path, page.encode("utf-8"))
    return path


__all__ = ["write_report", "load", "render", "thresholds", "funnel_steps", "thumbnail"]
