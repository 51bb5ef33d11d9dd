"""The `curation` command."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path


def _fail(msg: str) -> int:
    print(f"curation: error: {msg}", file=sys.stderr)
    return 2


def cmd_run(a: argparse.Namespace) -> int:
    from curation.engine.config import ManifestError
    from curation.engine.ingest import InputError
    from curation.engine.pipeline import RunError, run
    from curation.engine.preflight import PreflightError
    from curation.report import progress
    from curation.report.terminal import print_funnel
    from curation.weights import WeightsMissing

    try:
        with progress.session(verbose=a.verbose) as display:
            res = run(a.input, a.output, a.manifest, address=a.address, limit=a.limit, score_only=a.score_only,
                      weights=a.weights, num_cpus=a.num_cpus)
    except (ManifestError, InputError, WeightsMissing, RunError, PreflightError) as e:
        return _fail(str(e))
    print_funnel(res.funnel)
    if res.recovered:
        print(f"recovered from an interrupted run: {json.dumps(res.recovered)}")
    out = Path(res.output)
    print(f"sources: {res.new_sources} processed, {res.skipped_sources} already done; "
          f"{res.committed_clips} clips written in {res.wall_s:.1f} s")
    print(f"output:  {out}: shards/, index.parquet, audit/ (curation report {res.output})"
          + (f"; logs: {display.log_path}" if display.log_path else ""))
    return 0


def cmd_report(a: argparse.Namespace) -> int:
    from curation.report.terminal import report

    try:
        return report(a.dir, html=not a.no_html, table=not a.no_table)
    except FileNotFoundError as e:
        return _fail(str(e))


def cmd_inspect(a: argparse.Namespace) -> int:
    from curation.formats.shards import inspect_shard

    try:
        return inspect_shard(a.shard, as_json=a.json)
    except (FileNotFoundError, OSError) as e:
        return _fail(str(e))


def cmd_sync_view(a: argparse.Namespace) -> int:
    from curation.report import sync_view

    try:
        span = tuple(float(x) for x in a.span.split(":")) if a.span else None
        if span is not None and len(span) != 2:
            return _fail(f"--span {a.span}: give START:END in seconds")
        if a.source:
            if a.dir or a.key:
                return _fail("give either DIR KEY (a kept clip) or --source FILE (a span of a source), not both")
            sig = sync_view.from_source(a.source, a.start, a.end, a.weights, a.manifest)
        elif a.dir and a.key:
            sig = sync_view.from_output(a.dir, a.key)
        else:
            return _fail("give DIR KEY (a kept clip of an output) or --source FILE")
        out = a.out or f"sync-{a.key or Path(a.source).stem}.png"
        drawn = sync_view.render(sig, out, span, a.shift)
    except (FileNotFoundError, KeyError, ValueError, OSError) as e:
        return _fail(str(e).strip('"'))
    env = (f"envelope estimator on it: {drawn['envelope_offset']:+d} frames (confidence {drawn['envelope_conf']:.2f})"
           if drawn["envelope_offset"] is not None else "too short for the lag curve")
    print(f"{out}: {drawn['frames']} frames, {drawn['span'][0]:.2f}-{drawn['span'][1]:.2f} s; {env}")
    for k, v in sig.facts.items():
        print(f"  {k}: {sync_view.fmt_value(v)}")
    return 0


def cmd_weights(a: argparse.Namespace) -> int:
    from curation.weights import REGISTRY, check_file, fetch, local_path, weights_dir

    d = weights_dir(a.weights)
    if a.action == "list":
        print(f"weights directory: {d}")
        bad = 0
        for w in REGISTRY.values():
            p = local_path(w.name, d)
            c = check_file(w.name, p)
            state = {"missing": "missing", "sha256": "ok: sha256", "bundle": "ok: bundle",
                     "none": "present"}[c.kind] if c.ok or c.kind == "missing" else "FAILED"
            bad += (not c.ok and c.kind != "missing")
            rel = p.relative_to(d).as_posix() if p.is_relative_to(d) else str(p)
            print(f"  {w.name:20s} {state:11s} {rel:46s} {c.detail if c.kind != 'missing' else w.license}"
                  f"  [{w.used_by}]")
        return 1 if bad else 0
    if not a.name:
        return _fail("weights fetch needs a NAME (see `curation weights list`)")
    if a.name not in REGISTRY:
        return _fail(f"unknown weight file {a.name!r} (known: {', '.join(REGISTRY)})")
    try:
        p = fetch(a.name, d)
    except RuntimeError as e:
        return _fail(str(e))
    print(f"{a.name}: {p} ({check_file(a.name, p).detail})")
    return 0


def cmd_select(a: argparse.Namespace) -> int:
    from curation.engine.config import ManifestError
    from curation.engine.select import SelectError, plan, write_selection

    if not a.dry_run and not a.out:
        return _fail("select needs --out DST (or --dry-run for the funnel comparison only)")
    try:
        src, raw, res, tier_params = plan(a.src, a.set, a.manifest, a.where, a.tiers)
    except (SelectError, ManifestError) as e:
        return _fail(str(e))
    print(res.comparison, end="")
    if a.report:
        from curation.report.select_page import write_select_report

        print(f"report: {write_select_report(a.report, src, res)}")
    if a.dry_run:
        return 0
    spec = {"src": str(Path(a.src).resolve()), "sets": a.set, "manifest": a.manifest, "where": a.where,
            "tiers": Path(a.tiers).read_text() if a.tiers else None, "argv": sys.argv}
    from curation.engine.preflight import PreflightError
    from curation.report import progress

    try:
        # from a --score-only run the selected clips run the writing stages on Ray: the same quiet terminal
        with progress.session(verbose=a.verbose):
            dst = write_selection(src, raw, res, a.out, spec, tier_params, weights=a.weights, address=a.address,
                                  num_cpus=a.num_cpus)
    except (SelectError, PreflightError) as e:
        return _fail(str(e))
    from curation.report.terminal import report

    report(str(dst), html=True)
    print(f"selection: {dst}  (index {dst / 'index.parquet'}, shards {dst / 'shards'})")
    return 0


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="curation", description=(
        "Curate raw footage of people talking into a training-ready audio-video dataset "
        "(TalkVerse recipe) on Ray Data, audit every filter, and train a small DiT on the shards."))
    ap.add_argument("-v", "--verbose", action="store_true", help="log more (stage decisions, Ray set-up)")
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND")

    r = sub.add_parser("run", help="run the pipeline: footage in, shards + index + audit out",
                       description="Run the manifest's stages over the input on Ray Data and write WebDataset "
                                   "shards, index.parquet and the audit. Running again into the same output "
                                   "resumes: finished sources are skipped, no clip is written twice.")
    r.add_argument("--input", required=True, metavar="PATH",
                   help="a directory (searched recursively for video files), a single video, or a list file "
                        "(.txt one path per line; .csv/.jsonl/.parquet with a 'path' column and optional "
                        "'audio_path' for external audio). Local paths, file:// or pyarrow.fs URIs (s3://...)")
    r.add_argument("--output", required=True, metavar="DIR", help="output directory (created; reused to resume)")
    r.add_argument("--manifest", metavar="FILE", default=None,
                   help="manifest YAML file, or the name of one in manifests/ (default: default)")
    r.add_argument("--address", metavar="RAY_ADDRESS", default=None,
                   help="an existing Ray cluster (e.g. ray://head:10001 or auto); default: $RAY_ADDRESS, "
                        "else a local Ray on this machine")
    r.add_argument("--limit", type=int, metavar="N", default=None,
                   help="process at most N new sources in this run (the rest on a later run)")
    r.add_argument("--score-only", action="store_true",
                   help="score every clip with every stage without dropping any on a threshold: the audit "
                        "records what each threshold would reject (would_reject); no shards are written")
    r.add_argument("--weights", metavar="DIR", default=None,
                   help="weights directory (default: $CURATION_WEIGHTS, else ~/.cache/talkcurate/weights)")
    r.add_argument("--num-cpus", type=int, metavar="N", default=None,
                   help="CPUs for a local Ray (default: all of this machine's); ignored with --address")
    r.set_defaults(func=cmd_run)

    p = sub.add_parser("report", help="print the funnel and write DIR/report.html",
                       description="Print the funnel table of an output directory (also of a run in progress "
                                   "or interrupted) and write a self-contained DIR/report.html.")
    p.add_argument("dir", metavar="DIR", help="an output directory of `curation run`")
    p.add_argument("--no-html", action="store_true", help="only print the table")
    p.add_argument("--no-table", action="store_true",
                   help="print only the status and the report's path (`curation run` has printed the funnel)")
    p.set_defaults(func=cmd_report)

    i = sub.add_parser("inspect", help="list the samples of a shard",
                       description="List a shard's samples: key, files, duration, scores.")
    i.add_argument("shard", metavar="SHARD.tar", help="a shard written by `curation run`")
    i.add_argument("--json", action="store_true", help="print each sample's json instead of a table")
    i.set_defaults(func=cmd_inspect)

    v = sub.add_parser("sync-view", help="draw a clip's lips against its sound, frame by frame, to check sync by eye",
                       description="One PNG: the inner-lip gap per frame over the spectrogram on one time axis, and "
                                   "the envelope estimator's lag curve. DIR KEY: a kept clip as written (its pose.npz "
                                   "face points and its wav, after the writer's audio shift; no model runs). --source "
                                   "FILE: a span of a source file (the person stage and the sync stage's landmark pass "
                                   "run on it; the title gives the sync stage's offset and confidence).")
    v.add_argument("dir", metavar="DIR", nargs="?", help="an output directory of `curation run`")
    v.add_argument("key", metavar="KEY", nargs="?", help="a kept clip's key (index.parquet)")
    v.add_argument("--source", metavar="FILE", help="a source video instead of a kept clip")
    v.add_argument("--start", type=float, default=0.0, help="--source: span start (s)")
    v.add_argument("--end", type=float, default=None, help="--source: span end (s; default: the end of the file)")
    v.add_argument("--span", metavar="A:B", help="seconds of the clip to draw (default: all of it, at most 12 s)")
    v.add_argument("--shift", type=float, default=0.0,
                   help="preview the audio taken this many frames later (what a writer's shift of that size does)")
    v.add_argument("--out", metavar="PNG", help="output picture (default: sync-KEY.png)")
    v.add_argument("--weights", metavar="DIR", default=None, help="--source: weights directory (as for run)")
    v.add_argument("--manifest", metavar="FILE", default=None, help="--source: manifest (as for run)")
    v.set_defaults(func=cmd_sync_view)

    w = sub.add_parser("weights", help="list or fetch the pretrained weight files",
                       description="`list` shows which weight files are present in the weights directory; "
                                   "and which check each passed (a known sha256, or for MediaPipe bundles whose official hash is not "
                                   "known here the bundle's structure); `fetch NAME` downloads one from its "
                                   "official URL and checks it the same way.")
    w.add_argument("action", choices=["list", "fetch"], help="list, or fetch NAME")
    w.add_argument("name", nargs="?", help="the weight file to fetch (a name from `list`)")
    w.add_argument("--weights", metavar="DIR", default=None, help="weights directory (as for run)")
    w.add_argument("--verify", action="store_true", help="(kept for scripts: `list` always checks every file)")
    w.set_defaults(func=cmd_weights)

    s = sub.add_parser("select", help="decide again from recorded scores: new thresholds, tiers, what-if",
                       description="Decide every clip of SRC again from its recorded scores, without running a "
                                   "model: new thresholds (--set, --manifest), a filter (--where), tiers (--tiers). "
                                   "Prints the funnels before and after; writes DST (index, audit, shards repacked "
                                   "byte for byte, report). From a normal run only stricter thresholds are possible; "
                                   "from a --score-only run any.")
    s.add_argument("src", metavar="SRC", help="a finished output directory of `curation run`")
    s.add_argument("--out", metavar="DST", help="the new output directory")
    s.add_argument("--set", action="append", metavar="STAGE.KEY=VALUE", default=[],
                   help="a threshold of the run's manifest changed (repeatable), e.g. sync.min_conf=0.5")
    s.add_argument("--manifest", metavar="FILE", help="thresholds from another manifest with the same stages")
    s.add_argument("--where", metavar="EXPR", help="a pandas expression over the audit's columns, e.g. 'face_px >= 200'")
    s.add_argument("--tiers", metavar="FILE", help="YAML: tiers: [{name, set: {stage.key: value}, where}], first met wins")
    s.add_argument("--dry-run", action="store_true", help="print the funnel comparison only (reads only the audit)")
    s.add_argument("--report", metavar="HTML", help="write the comparison as an HTML page")
    s.add_argument("--weights", metavar="DIR", default=None,
                   help="weights directory (as for run; a selection from a --score-only run runs skeleton and write)")
    s.add_argument("--address", metavar="RAY_ADDRESS", default=None, help="an existing Ray cluster (as for run)")
    s.add_argument("--num-cpus", type=int, metavar="N", default=None, help="CPUs for a local Ray (as for run)")
    s.set_defaults(func=cmd_select)

    _add_optional_commands(sub)
    return ap


def _add_optional_commands(sub) -> None:
    """Commands that live in their own modules (the DiT, the TalkVerse export). Imported directly: a broken
    module fails the command line with its traceback instead of making a command vanish."""
    from curation.dit import cli as model_cli
    from curation.formats import talkverse as export

    model_cli.add_prepare_parser(sub)
    model_cli.add_train_parser(sub)
    model_cli.add_sample_parser(sub)
    model_cli.add_bench_parser(sub)
    export.add_parser(sub)


def main(argv: list[str] | None = None) -> int:
    ap = build_parser()
    a = ap.parse_args(argv)
    if a.func is not cmd_run:  # report, inspect, export, train: an s3:// (any pyarrow.fs) output read locally
        from curation.engine.output import localize_remote_args

        localize_remote_args(a)
    logging.basicConfig(level=logging.INFO if a.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    return int(a.func(a) or 0)


if __name__ == "__main__":
    sys.exit(main())
