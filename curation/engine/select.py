"""`curation select`: decide every clip of a finished run again from its recorded scores, without running a model.

The checks are those the run declared (`audit/thresholds.json`: stage, score, params key, direction, reason);
the new bounds come from the run's manifest with `--set stage.key=value` overrides, or from another manifest
with the same stages. A `--where` expression (pandas syntax over the clip columns) and tiers (`--tiers FILE`)
come on top. What a clip needs to be decided again:

- A clip the run kept has every score: any threshold can be applied to it (a missing measurement fails its
  check, and is reported).
- A clip the run rejected on a threshold at stage S stopped there: it never ran the stages after S. It stays
  rejected when one of its recorded scores fails the new bounds at S or before; otherwise deciding it needs
  a rerun, which `select` names instead of guessing.
- In a `--score-only` run every clip ran every stage, so any thresholds work.

The decision is vectorised over the audit table, so a what-if (`--dry-run`) on a million clips takes seconds."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

SELECT_STAGE = "select"  # the pseudo-stage that rejects on --where and on tiers
TIER_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


class SelectError(ValueError):
    """A selection that cannot be made as asked; the message says why and what to do."""


@dataclass(frozen=True)
class Check:
    """A declared check of one stage (stages.base.Check) as select applies it to a column of the audit."""

    stage: str
    score: str
    key: str
    direction: str  # min: score >= bound passes; max: score <= bound; max_abs: |score| <= bound
    reason: str
    hard: bool = False
    bound: float | None = None  # the bound the run applied (read from its thresholds.json)

    def passes(self, values: pd.Series, bound: float | None) -> pd.Series:
        """True where the value passes; a missing value never passes; no bound (None) means open."""
        v = pd.to_numeric(values, errors="coerce")
        if bound is None:
            return v.notna()
        if self.direction == "min":
            return v >= bound
        if self.direction == "max":
            return v <= bound
        return v.abs() <= bound

    def needs(self, bound: float | None) -> str:
        if bound is None:
            return "a value"
        return {"min": f">= {bound:g}", "max": f"<= {bound:g}",
                "max_abs": f">= {-bound:g} and <= {bound:g}"}[self.direction]


def declared_checks(stages: list[str], params: dict[str, Any]) -> list[Check]:
    """The checks in force under `params` (validated Params objects per stage), as the stages declare them."""
    from stages import stage_class

    out = []
    for s in stages:
        p = params.get(s)
        if p is None:
            continue
        for c in stage_class(s).Params.checks:
            if c.applies(p) and c.bound(p) is not None:
                out.append(Check(s, c.score, c.key, c.direction, c.reason, c.hard))
    return out


@dataclass
class Selection:
    """The thresholds one decision uses: the checks with their bounds, and an optional where-expression."""

    checks: list[Check]
    bounds: dict[tuple[str, str], float | None]  # (stage, key) -> bound
    where: str | None = None
    name: str | None = None  # the tier's name


# ---------------------------------------------------------------------------------------------------
# Reading a run

@dataclass
class Source:
    root: Path
    clips: pd.DataFrame
    checks: list[Check]
    stages: list[str]
    manifest_raw: dict
    score_only: bool
    funnel: dict = field(default_factory=dict)


def _read_checks(root: Path) -> list[Check]:
    """The checks the run applied, from its audit/thresholds.json."""
    from curation.engine import thresholds

    tables = thresholds.read(root / "audit")
    if tables is None:
        raise SelectError(f"{root} has no audit/thresholds.json: it was made by a version of talkcurate that did not "
                          "declare its thresholds; run it again to select from it")
    return [Check(r["stage"], r["score"], r["key"], r["direction"], r["reason"], bool(r.get("hard")), r["bound"])
            for r in tables["thresholds"]]


def read_source(src: str | Path) -> Source:
    root = Path(src)
    clips_p = root / "audit" / "clips.parquet"
    if not clips_p.exists():
        raise SelectError(f"{root} is not a finished output directory of `curation run` (no audit/clips.parquet)")
    manifest_raw = yaml.safe_load((root / "manifest.yaml").read_text(encoding="utf-8"))
    stages = [s["name"] for s in manifest_raw.get("stages", []) if s.get("enabled", True)]
    runs = []
    runs_p = root / "audit" / "runs.jsonl"
    if runs_p.exists():
        for line in runs_p.read_text(encoding="utf-8").splitlines():
            try:
                runs.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    score_only = bool(runs) and all(r.get("score_only") for r in runs if "score_only" in r)
    funnel_p = root / "audit" / "funnel.json"
    funnel = json.loads(funnel_p.read_text()) if funnel_p.exists() else {}
    return Source(root, pd.read_parquet(clips_p), _read_checks(root), stages, manifest_raw, score_only, funnel)


# ---------------------------------------------------------------------------------------------------
# Thresholds from --set / --manifest

def parse_sets(items: list[str] | dict | None) -> dict[str, Any]:
    """`stage.key=value` strings (values parsed as YAML scalars) or a mapping of the same."""
    if not items:
        return {}
    if isinstance(items, dict):
        return {str(k): v for k, v in items.items()}
    out = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or "." not in name:
            raise SelectError(f"--set {item!r}: expected stage.key=value (for example sync.min_conf=0.5)")
        out[name.strip()] = yaml.safe_load(value)
    return out


def apply_sets(manifest_raw: dict, sets: dict[str, Any]) -> dict:
    raw = json.loads(json.dumps(manifest_raw))
    by_name = {s["name"]: s for s in raw.get("stages", [])}
    for name, value in sets.items():
        stage, _, key = name.partition(".")
        if stage not in by_name:
            raise SelectError(f"--set {name}: the run has no stage '{stage}' (stages: {', '.join(by_name)})")
        by_name[stage].setdefault("params", {})[key] = value
    return raw


def load_raw_manifest(manifest_raw: dict, origin: str):
    """Validate a manifest given as a mapping exactly as `curation run` validates a file; a Manifest."""
    import tempfile

    from curation.engine.config import ManifestError, load_manifest

    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "manifest.yaml"
        p.write_text(yaml.safe_dump(manifest_raw, sort_keys=False), encoding="utf-8")
        try:
            return load_manifest(str(p))
        except ManifestError as e:
            raise SelectError(str(e).replace(str(p), origin)) from None


def selection_for(src: "Source", manifest_raw: dict, where: str | None, origin: str, name: str | None = None
                  ) -> "Selection":
    """The checks in force under a manifest (as the stages declare them) with their bounds."""
    m = load_raw_manifest(manifest_raw, origin)
    params = {s: m.params(s) for s in src.stages if m.stage(s) is not None}
    checks = declared_checks(src.stages, params)
    bounds = {(c.stage, c.key): float(getattr(params[c.stage], c.key)) for c in checks}
    return Selection(checks, bounds, where, name)


def manifest_for(src: Source, sets: dict[str, Any], manifest_path: str | None) -> dict:
    if manifest_path:
        from curation.engine.config import load_manifest

        m = load_manifest(manifest_path)
        raw = yaml.safe_load(m.text or Path(m.source_path).read_text(encoding="utf-8"))
        new_stages = [s["name"] for s in raw["stages"] if s.get("enabled", True)]
        if new_stages != src.stages:
            raise SelectError(f"--manifest {manifest_path}: its stages {new_stages} differ from the run's {src.stages}; "
                              "select changes thresholds, not stages (run `curation run` for other stages)")
        base = raw
    else:
        base = src.manifest_raw
    return apply_sets(base, sets)


# ---------------------------------------------------------------------------------------------------
# The decision

@dataclass
class Decision:
    status: pd.Series   # kept / rejected
    stage: pd.Series
    reason: pd.Series
    message: pd.Series
    needs_rerun: pd.DataFrame  # key, source, stage: clips whose new decision needs stages they never ran
    missing: dict[str, int]    # score -> clips whose decision hit a missing measurement of it


def _threshold_reasons(checks: list[Check]) -> set[tuple[str, str]]:
    return {(c.stage, c.reason) for c in checks}


def decide(src: Source, sel: Selection) -> Decision:
    clips = src.clips
    n = len(clips)
    order = {s: i for i, s in enumerate(src.stages)}
    INF = len(src.stages) + 1
    src_rejected = clips["status"].eq("rejected").to_numpy()
    src_stage_idx = clips["stage"].map(order).fillna(INF).to_numpy(dtype=float)
    src_stage_idx = np.where(src_rejected, src_stage_idx, INF)
    th = _threshold_reasons(src.checks)
    src_bounds = {(c.stage, c.key): c.bound for c in src.checks}
    changed_reasons = {(c.stage, c.reason) for c in sel.checks
                       if src_bounds.get((c.stage, c.key), object()) != sel.bounds.get((c.stage, c.key))}
    wr = (clips["would_reject"].fillna("").astype(str) if "would_reject" in clips
          else pd.Series("", index=clips.index))
    would = {(c.stage, c.reason): wr.str.contains(rf"(?:^|;){re.escape(c.stage)}:{re.escape(c.reason)}(?:;|$)",
                                                  regex=True).to_numpy(dtype=bool) for c in sel.checks}
    by_threshold = np.array([(s, r) in th for s, r in zip(clips["stage"], clips["reason"])], dtype=bool) & src_rejected
    # A rejected clip stopped at its stage (in a score-only run only a hard check or reason stops a clip).
    reached_all = ~src_rejected
    # the last stage each clip ran (inclusive): all for kept or score-only clips, else the rejecting stage
    last_idx = np.where(reached_all, INF, src_stage_idx)

    new_idx = np.full(n, INF, dtype=float)
    new_reason = np.empty(n, dtype=object)
    new_msg = np.empty(n, dtype=object)
    missing: dict[str, int] = {}
    rerun_stage = np.empty(n, dtype=object)

    # checks in stage order, then declaration order: the first failing one gives the reason (as Stage.check)
    ordered = sorted(sel.checks, key=lambda c: order.get(c.stage, INF))
    fail_check = np.full(n, -1)
    for k, c in enumerate(ordered):
        i = order.get(c.stage)
        if i is None:
            continue
        bound = sel.bounds.get((c.stage, c.key))
        col = clips[c.score] if c.score in clips else pd.Series(np.nan, index=clips.index)
        vals = pd.to_numeric(col, errors="coerce")
        ran = last_idx >= i  # the clip was scored by this stage
        present = vals.notna().to_numpy()
        ok = c.passes(vals, bound).to_numpy()
        # A bound the run applied unchanged needs no new decision: the run's verdict stands, recorded score or
        # not (a stage may apply a check only when it measures, e.g. the aesthetic score without CLIP weights).
        # In a normal run (and for a hard check) a clip that went past the stage passed it; in a score-only run
        # a threshold's verdict is `would_reject` (stage:reason), unless another bound of that reason changed.
        if (c.stage, c.key) in src_bounds and src_bounds[(c.stage, c.key)] == bound:
            if c.hard or not src.score_only:
                ran = ran & ~(src_stage_idx > i)
            elif (c.stage, c.reason) not in changed_reasons:
                ok = ~would[(c.stage, c.reason)]
                present = np.ones(n, dtype=bool)
        undecided = new_idx > i
        # At the stage that stopped a clip, a score it lacks was never measured (the stage stopped first):
        # no verdict on it; a rerun decides (for a threshold stop) or the run's hard reason stands.
        unmeasured_stop = src_rejected & (src_stage_idx == i) & ~present
        fails = ran & ~ok & undecided & ~unmeasured_stop
        miss_counted = fails & ~present
        if miss_counted.any():
            missing[c.score] = missing.get(c.score, 0) + int(miss_counted.sum())
        new_idx[fails] = i
        new_reason[fails] = c.reason
        fail_check[fails] = k

    # messages as Stage.check writes them, made only for the rows that fail (vectorised per check)
    for k, c in enumerate(ordered):
        rows = np.flatnonzero(fail_check == k)
        if len(rows):
            v = pd.to_numeric(clips[c.score].iloc[rows], errors="coerce") if c.score in clips else pd.Series(
                np.nan, index=rows)
            shown = v.map(lambda x: "none" if pd.isna(x) else f"{x:.4g}").to_numpy(dtype=object)
            new_msg[rows] = [f"{c.score}={s}, needs {c.needs(sel.bounds.get((c.stage, c.key)))}" for s in shown]

    # Clips the run stopped before the end: decided only if something they did record fails now.
    stopped = ~reached_all & src_rejected
    hard_stop = stopped & ~by_threshold
    thr_stop = stopped & by_threshold
    # hard rejection: kept as it was unless a threshold rejects the clip at an earlier stage now
    keep_src = hard_stop & ~(new_idx < src_stage_idx)
    # threshold rejection at S: passes everything it recorded -> needs the stages it never ran
    rerun = thr_stop & (new_idx > src_stage_idx)
    for j in np.flatnonzero(rerun):
        rerun_stage[j] = src.stages[int(src_stage_idx[j])]

    status = np.where(new_idx < INF, "rejected", "kept").astype(object)
    stage_out = np.array([src.stages[int(i)] if i < INF else None for i in new_idx], dtype=object)
    reason_out, msg_out = new_reason.copy(), new_msg.copy()
    for arr, col in ((stage_out, "stage"), (reason_out, "reason"), (msg_out, "message")):
        arr[keep_src] = clips[col].to_numpy()[keep_src]
    status[keep_src] = "rejected"

    # --where on what is still kept
    if sel.where:
        alive = status == "kept"
        try:
            ok = clips.eval(sel.where, engine="python")
        except Exception as e:  # a pandas expression the user typed: say what failed
            raise SelectError(f"--where {sel.where!r}: {type(e).__name__}: {e}") from None
        ok = pd.Series(ok, index=clips.index).fillna(False).astype(bool).to_numpy()
        drop = alive & ~ok
        status[drop] = "rejected"
        stage_out[drop] = SELECT_STAGE
        reason_out[drop] = "where"
        msg_out[drop] = f"fails --where {sel.where}"

    rr = clips.loc[rerun, ["key", "source"]].copy()
    rr["stage"] = rerun_stage[rerun]
    return Decision(pd.Series(status, index=clips.index), pd.Series(stage_out, index=clips.index),
                    pd.Series(reason_out, index=clips.index), pd.Series(msg_out, index=clips.index), rr, missing)


# ---------------------------------------------------------------------------------------------------
# Tiers

@dataclass
class Tier:
    name: str
    sets: dict[str, Any]
    where: str | None


def read_tiers(path: str | Path) -> list[Tier]:
    raw = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    items = raw.get("tiers") if isinstance(raw, dict) else raw
    if not isinstance(items, list) or not items:
        raise SelectError(f"{path}: expected `tiers:`, an ordered list of {{name, set, where}}")
    tiers, seen = [], set()
    for i, t in enumerate(items):
        if not isinstance(t, dict) or "name" not in t:
            raise SelectError(f"{path}: tiers[{i}]: needs a name")
        extra = set(t) - {"name", "set", "where"}
        if extra:
            raise SelectError(f"{path}: tiers[{i}]: unknown key(s) {sorted(extra)} (allowed: name, set, where)")
        name = str(t["name"])
        if not TIER_RE.match(name) or name in seen:
            raise SelectError(f"{path}: tiers[{i}].name: {name!r} must be unique and made of letters, digits, _ and -")
        seen.add(name)
        tiers.append(Tier(name, parse_sets(t.get("set") or {}), t.get("where")))
    return tiers


def decide_tiers(src: Source, base_raw: dict, base_where: str | None, tiers: list[Tier], origin: str
                 ) -> tuple[Decision, pd.Series, dict[str, dict]]:
    """Each clip gets the first tier whose thresholds it meets (on top of the base thresholds); a clip that
    meets none is rejected at `select` with `no_tier`. Returns the decision, the tier per clip, and each
    tier's params."""
    base = decide(src, selection_for(src, base_raw, base_where, origin))
    tier_of = pd.Series([None] * len(src.clips), index=src.clips.index, dtype=object)
    tier_params = {}
    for t in tiers:
        raw = apply_sets(base_raw, t.sets)
        where = " and ".join(f"({w})" for w in (base_where, t.where) if w) or None
        sel = selection_for(src, raw, where, f"{origin} tier {t.name}", t.name)
        tier_params[t.name] = {f"{s}.{k}": v for (s, k), v in sel.bounds.items()}
        d = decide(src, sel)
        take = d.status.eq("kept") & base.status.eq("kept") & tier_of.isna()
        tier_of[take] = t.name
        for k, v in d.missing.items():
            base.missing[k] = max(base.missing.get(k, 0), v)
        if len(d.needs_rerun):
            base.needs_rerun = pd.concat([base.needs_rerun, d.needs_rerun]).drop_duplicates("key")
    none = base.status.eq("kept") & tier_of.isna()
    base.status[none] = "rejected"
    base.stage[none] = SELECT_STAGE
    base.reason[none] = "no_tier"
    base.message[none] = "meets no tier's thresholds"
    return base, tier_of, tier_params


# ---------------------------------------------------------------------------------------------------
# Funnels side by side

def new_clips_table(src: Source, d: Decision, tier: pd.Series | None) -> pd.DataFrame:
    clips = src.clips.copy()
    clips["status"] = d.status.to_numpy()
    clips["stage"] = d.stage.to_numpy()
    clips["reason"] = d.reason.to_numpy()
    clips["message"] = d.message.to_numpy()
    kept = clips["status"].eq("kept")
    if not src.score_only:
        # a clip is in a shard only if the run wrote it (kept) and it is still kept
        clips.loc[~kept, "shard"] = None
    clips["would_reject"] = None
    if tier is not None:
        clips["tier"] = tier.where(kept, None).to_numpy()
    return clips


def stage_counts(clips: pd.DataFrame, stages: list[str]) -> list[dict]:
    """Clips and seconds out of every stage (after scenes: candidate clips), from the decisions."""
    is_clip = pd.to_numeric(clips["clip_index"], errors="coerce").fillna(-1) >= 0
    dur = pd.to_numeric(clips["duration_s"], errors="coerce").fillna(0.0)
    order = {s: i for i, s in enumerate(stages)}
    rej_at = clips["stage"].map(order).where(clips["status"].eq("rejected"))
    rows = []
    for i, s in enumerate(stages):
        alive = is_clip & (rej_at.isna() | (rej_at > i))
        rows.append({"stage": s, "out": int(alive.sum()), "seconds_out": float(dur[alive].sum()),
                     "rejected": {str(k): int(v) for k, v in
                                  clips.loc[clips["stage"].eq(s) & clips["status"].eq("rejected"), "reason"]
                                  .value_counts().items()}})
    return rows


def format_comparison(old: list[dict], new: list[dict], tiers: dict[str, tuple[int, float]] | None = None) -> str:
    from rich.console import Console
    from rich.table import Table

    t = Table(title="select: funnel before → after")
    for col, just in (("stage", "left"), ("clips out before", "right"), ("after", "right"), ("Δ", "right"),
                      ("kept h before", "right"), ("after", "right"), ("rejected after (reason: n)", "left")):
        t.add_column(col, justify=just)
    for o, n_ in zip(old, new):
        rej = ", ".join(f"{k}: {v}" for k, v in sorted(n_["rejected"].items(), key=lambda kv: -kv[1])) or "-"
        t.add_row(o["stage"], str(o["out"]), str(n_["out"]), f"{n_['out'] - o['out']:+d}",
                  f"{o['seconds_out'] / 3600:.3f}", f"{n_['seconds_out'] / 3600:.3f}", rej)
    import io

    buf = io.StringIO()
    console = Console(file=buf, width=160)
    if True:
        console.print(t)
        if tiers:
            tt = Table(title="tiers")
            for col in ("tier", "clips", "hours"):
                tt.add_column(col)
            for name, (k, s) in tiers.items():
                tt.add_row(name, str(k), f"{s / 3600:.3f}")
            console.print(tt)
    return buf.getvalue()


# ---------------------------------------------------------------------------------------------------
# The command

@dataclass
class SelectResult:
    comparison: str
    old: list[dict]
    new: list[dict]
    clips: pd.DataFrame
    missing: dict[str, int]
    tiers: dict[str, tuple[int, float]]
    output: str | None = None


def plan(src_dir: str, sets: list[str] | None = None, manifest: str | None = None, where: str | None = None,
         tiers_file: str | None = None) -> tuple[Source, dict, SelectResult, dict[str, dict]]:
    src = read_source(src_dir)
    sets_d = parse_sets(sets)
    raw = manifest_for(src, sets_d, manifest)
    origin = "--set/--manifest"
    if tiers_file:
        tiers = read_tiers(tiers_file)
        d, tier_of, tier_params = decide_tiers(src, raw, where, tiers, origin)
    else:
        d = decide(src, selection_for(src, raw, where, origin))
        tier_of, tier_params = None, {}
    if len(d.needs_rerun):
        lines = [f"  {r.key} ({r.source}): rejected at {r.stage} in {src.root}; the new thresholds pass it there, "
                 f"so it needs {r.stage} onwards" for r in d.needs_rerun.head(20).itertuples()]
        more = len(d.needs_rerun) - 20
        raise SelectError(
            f"these thresholds are looser than the run's: {len(d.needs_rerun)} clip(s) it rejected would need stages "
            f"they never ran:\n" + "\n".join(lines) + (f"\n  ... and {more} more" if more > 0 else "") +
            "\nrerun `curation run` with these thresholds, or make SRC with --score-only to select freely")
    clips = new_clips_table(src, d, tier_of)
    stages = list(src.stages) + ([SELECT_STAGE] if (where or tiers_file) else [])
    old_counts = stage_counts(src.clips, stages)
    new_counts = stage_counts(clips, stages)
    tiers_sum = {}
    if tier_of is not None:
        dur = pd.to_numeric(clips["duration_s"], errors="coerce").fillna(0.0)
        for name in tier_params:
            m = clips["tier"].eq(name)
            tiers_sum[name] = (int(m.sum()), float(dur[m].sum()))
    comp = format_comparison(old_counts, new_counts, tiers_sum or None)
    if d.missing:
        comp += "missing measurements (a threshold on them fails the clip): " + ", ".join(
            f"{k}: {v} clip(s)" for k, v in sorted(d.missing.items())) + "\n"
    return src, raw, SelectResult(comp, old_counts, new_counts, clips, d.missing, tiers_sum), tier_params


# ---------------------------------------------------------------------------------------------------
# Writing DST from a normal run: shards repacked member for member, no decoding or encoding

def _spec_digest(spec: dict) -> str:
    import hashlib

    return hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _shard_members(path: Path):
    """(key, TarInfo, bytes) of every member of a shard, in order."""
    import tarfile

    with tarfile.open(path, "r") as tf:
        for ti in tf:
            if not ti.isfile():
                continue
            key = ti.name.split("/")[-1].split(".", 1)[0]
            yield key, ti, tf.extractfile(ti).read()


class _ShardWriter:
    """Tar shards of at most max_samples samples / max_bytes bytes; each written under a temporary name and
    renamed when complete (the commit that names them comes after)."""

    def __init__(self, directory: Path, prefix: str, max_samples: int, max_bytes: int):
        self.dir, self.prefix = directory, prefix
        self.max_samples, self.max_bytes = max_samples, max_bytes
        self.no, self.tf, self.tmp, self.keys, self.size = 0, None, None, [], 0
        self.shard_of: dict[str, str] = {}
        self.written: list[str] = []

    def _name(self) -> str:
        return f"{self.prefix}shard-{self.no:06d}.tar"

    def add(self, key: str, members: list[tuple[Any, bytes]]) -> None:
        import io
        import tarfile

        size = sum(len(b) for _, b in members)
        if self.tf is not None and (len(self.keys) >= self.max_samples or self.size + size > self.max_bytes):
            self.flush()
        if self.tf is None:
            self.dir.mkdir(parents=True, exist_ok=True)
            self.tmp = self.dir / (Path(self._name()).name + ".tmp")
            self.tf = tarfile.open(self.tmp, "w")
        for ti, data in members:
            self.tf.addfile(ti, io.BytesIO(data))
        self.keys.append(key)
        self.size += size
        self.shard_of[key] = self._name()

    def flush(self) -> None:
        import os

        if self.tf is None:
            return
        self.tf.close()
        with open(self.tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(self.tmp, self.dir / Path(self._name()).name)
        self.written.append(self._name())
        self.no += 1
        self.tf, self.keys, self.size = None, [], 0


def repack(src: Source, clips: pd.DataFrame, dst_shards: Path, max_samples: int, max_bytes: int) -> dict[str, str]:
    """Copy the kept clips' samples from SRC's shards into DST's (per tier when there is a tier column),
    byte for byte; returns key -> new shard name (relative to DST/shards)."""
    kept = clips[clips["status"].eq("kept") & clips["shard"].notna()]
    tier_of = kept.set_index("key")["tier"].to_dict() if "tier" in kept else {}
    want = set(kept["key"])
    writers: dict[str | None, _ShardWriter] = {}
    for shard in sorted(kept["shard"].unique()):
        current, members = None, []
        for key, ti, data in _shard_members(src.root / "shards" / shard):
            if key != current:
                if current in want:
                    t = tier_of.get(current)
                    w = writers.get(t) or writers.setdefault(t, _ShardWriter(
                        dst_shards / t if t else dst_shards, f"{t}/" if t else "", max_samples, max_bytes))
                    w.add(current, members)
                current, members = key, []
            members.append((ti, data))
        if current in want:
            t = tier_of.get(current)
            w = writers.get(t) or writers.setdefault(t, _ShardWriter(
                dst_shards / t if t else dst_shards, f"{t}/" if t else "", max_samples, max_bytes))
            w.add(current, members)
    shard_of: dict[str, str] = {}
    for w in writers.values():
        w.flush()
        shard_of.update(w.shard_of)
    missing = want - set(shard_of)
    if missing:
        raise SelectError(f"{len(missing)} kept clip(s) are not in SRC's shards (e.g. {sorted(missing)[:3]}): "
                          "SRC is incomplete or was changed")
    return shard_of


def _sources_table(src_root: Path, clips: pd.DataFrame) -> pd.DataFrame:
    sources = pd.read_parquet(src_root / "audit" / "sources.parquet")
    kept = clips[clips["status"].eq("kept")]
    dur = pd.to_numeric(kept["duration_s"], errors="coerce").fillna(0.0)
    n_kept = kept.groupby("source").size()
    kept_s = dur.groupby(kept["source"]).sum()
    shards = kept.dropna(subset=["shard"]).groupby("source")["shard"].agg(lambda s: ",".join(sorted(set(s))))
    sources["n_kept"] = sources["source"].map(n_kept).fillna(0).astype(int)
    sources["kept_s"] = sources["source"].map(kept_s).fillna(0.0).astype(float)
    sources["shards"] = sources["source"].map(shards)
    return sources


def _nan_to_none(v):
    if v is None:
        return None
    try:
        return None if pd.isna(v) else v
    except (TypeError, ValueError):
        return v


def _record_windows(src: Source, clips: pd.DataFrame, done: set[str], window: int, rerun: tuple[str, ...]):
    """Lists of ClipRecords rebuilt from a score-only run's audit, one source's records together, `window`
    sources a list, the sources already committed in DST left out. A clip keeps what the stages before
    decided and handed on (its face track, person box, audio shift: `record_data`), its scores and labels, and
    the new decision; the stages in `rerun` run on it again, with their own time."""
    from curation.engine import thresholds
    from curation.engine.pathnames import original_column
    from curation.engine.record import CANDIDATE, REJECTED, ClipRecord

    if "record_data" not in clips:
        raise SelectError(f"{src.root} is a --score-only run made before score-only runs kept their clips' working "
                          "data (audit record_data): run it again with --score-only to select from it")
    declared = (thresholds.read(src.root / "audit") or {}).get("scores", [])
    numbers = [d["score"] for d in declared if d["type"] == "number" and d["score"] in clips]
    labels = [d["score"] for d in declared if d["type"] == "label" and d["score"] in clips]
    sources = pd.read_parquet(src.root / "audit" / "sources.parquet")
    audio_of = dict(zip(original_column(sources, "source"), original_column(sources, "audio_path")))
    probe_cols = [c for c in sources.columns if c.startswith("probe_")]
    probe_of = {s: {c[len("probe_"):]: _nan_to_none(v) for c, v in zip(probe_cols, row)}
                for s, row in zip(original_column(sources, "source"), sources[probe_cols].itertuples(index=False))}
    clips = clips.assign(_source=original_column(clips, "source"))
    timing = [c for c in clips.columns if c.startswith(("wall_s__", "cpu_s__", "node__", "worker__"))]
    batch: list = []
    n_src = 0
    for source, rows in clips.groupby("_source", sort=False):
        if source in done:
            continue
        recs = []
        for row in rows.to_dict("records"):
            idx = _nan_to_none(row.get("clip_index"))
            kept = row["status"] == "kept"
            rec = ClipRecord(key=row["key"], source=source, source_id=row["source_id"], audio_path=audio_of.get(source),
                             clip_index=None if idx is None else int(idx), n_siblings=len(rows),
                             start_s=_nan_to_none(row.get("start_s")), end_s=_nan_to_none(row.get("end_s")),
                             status=CANDIDATE if kept else REJECTED, stage=None if kept else row["stage"],
                             reason=None if kept else row["reason"], message=None if kept else row["message"])
            blob = _nan_to_none(row.get("record_data"))
            if blob:
                saved = json.loads(blob)
                rec.data, rec.probe = saved["data"], saved["probe"]
            else:
                rec.probe = dict(probe_of.get(source, {}))
            rec.scores = {k: (None if _nan_to_none(row[k]) is None else float(row[k])) for k in numbers}
            rec.labels = {k: _nan_to_none(row[k]) for k in labels}
            if kept and _nan_to_none(row.get("tier")):
                rec.labels["tier"] = row["tier"]
            for c in timing:
                kind, stage = c.split("__", 1)
                v = _nan_to_none(row[c])
                if v is None or stage in rerun:
                    continue
                if kind in ("wall_s", "cpu_s"):
                    rec.timings.setdefault(stage, [0.0, 0.0])[0 if kind == "wall_s" else 1] = float(v)
                else:
                    rec.where.setdefault(stage, ["", ""])[0 if kind == "node" else 1] = str(v)
            recs.append(rec)
        batch.extend(recs)
        n_src += 1
        if n_src >= window:
            yield batch
            batch, n_src = [], 0
    if batch:
        yield batch


def write_selection(src: Source, raw: dict, res: SelectResult, dst: str | Path, spec: dict,
                    tier_params: dict[str, dict], *, weights: str | None = None, address: str | None = None,
                    num_cpus: int | None = None) -> Path:
    """Write DST as an output directory of its own: shards, index, audit, thresholds, a pointer to SRC.

    From a normal run the kept clips' samples are copied byte for byte (one commit). From a --score-only run
    the selected clips run the stages that make sample files (skeleton, write) on Ray, as `curation run` does,
    committed source by source. Safe to interrupt either way: the same command again resumes (what no commit
    names is removed, committed sources are not run again)."""
    import time

    from curation.engine import runlog
    from curation.engine import thresholds as th
    from curation.engine.audit import consolidate
    from curation.engine.output import OutputDir

    t0 = time.time()
    root = Path(dst)
    out = OutputDir(root)
    digest = _spec_digest(spec)
    marker, pending = out.audit / "select.json", out.audit / "select.pending.json"
    if root.resolve() == src.root.resolve():
        raise SelectError("--out must be another directory than SRC")
    if marker.exists():
        done = json.loads(marker.read_text())
        if done.get("digest") == digest:
            return root  # already made by the same selection
        raise SelectError(f"{root} holds another selection ({done.get('argv')}); choose a new --out")
    if pending.exists():
        if json.loads(pending.read_text()).get("digest") != digest:
            raise SelectError(f"{root} holds an interrupted selection of other thresholds; choose a new --out")
    elif root.exists() and any(root.iterdir()):
        raise SelectError(f"{root} exists and is not empty: choose a new --out")
    out.create()
    out.write_atomic(pending, json.dumps({"digest": digest, "argv": spec.get("argv")}).encode())
    out.recover()
    run = runlog.begin(out, t0)
    out.write_atomic(root / "manifest.yaml", yaml.safe_dump(raw, sort_keys=False).encode())
    m = load_raw_manifest(raw, str(root / "manifest.yaml"))
    stages = list(src.stages) + ([SELECT_STAGE] if spec.get("where") or spec.get("tiers") else [])
    clips = res.clips.copy()
    if src.score_only:
        from curation.engine.ingest import absolute_path
        from curation.engine.pipeline import process_windows
        from curation.engine.preflight import preflight
        from curation.weights import weights_dir

        rerun = tuple(s for s in ("skeleton", "write") if s in src.stages)
        wdir = absolute_path(str(weights_dir(weights)))
        preflight(m, wdir, str(root))
        windows = _record_windows(src, clips, out.finished_sources(), m.run.window_sources, rerun)
        process_windows(out, m, wdir, windows, address=address, num_cpus=num_cpus, only_stages=list(rerun))
    elif not out.committed_parts():
        for p in sorted(out.shards.rglob("*.tar"), reverse=True):  # nothing is committed yet: start clean
            p.unlink()
        shard_of = repack(src, clips, out.shards, m.output.shard_max_samples, m.output.shard_max_bytes)
        clips["shard"] = clips["key"].map(shard_of)
        out.commit(0, {}, clips, _sources_table(src.root, clips))
    tables = th.table(m)
    tables["hard_reasons"] += [
        {"stage": SELECT_STAGE, "reason": "where", "doc": "`curation select --where`: the clip fails the expression"},
        {"stage": SELECT_STAGE, "reason": "no_tier", "doc": "`curation select --tiers`: the clip meets no tier"}]
    out.write_atomic(out.audit / th.FILE, (json.dumps(tables, indent=2) + "\n").encode())
    run.end({"select": True, "score_only": False, "source": str(src.root.resolve()), "argv": spec.get("argv")})
    consolidate(root, stages)
    info = {"digest": digest, "source": str(src.root.resolve()), "argv": spec.get("argv"), "sets": spec.get("sets"),
            "manifest": spec.get("manifest"), "where": spec.get("where"), "tiers": tier_params and list(tier_params),
            "tier_params": tier_params, "stages": stages, "missing_measurements": res.missing,
            "from_score_only": src.score_only, "kept_clips": int(clips["status"].eq("kept").sum())}
    out.write_atomic(marker, json.dumps(info, indent=2, default=str).encode())  # the selection's end
    pending.unlink()
    return root
