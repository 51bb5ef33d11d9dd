"""`curation report DIR`: the funnel as a table in the terminal (and the HTML report, curation.report.html)."""

from __future__ import annotations

import json
from pathlib import Path


def _hms(s: float) -> str:
    s = float(s or 0.0)
    return f"{s / 3600:.2f} h" if s >= 3600 else (f"{s / 60:.1f} min" if s >= 60 else f"{s:.1f} s")


def print_funnel(funnel: dict, console=None) -> None:
    from rich.console import Console
    from rich.table import Table

    if console is None:
        # Piped into a log (no terminal): wide enough that no column wraps, instead of rich's 80.
        console = Console() if Console().is_terminal else Console(width=160)
    tot = funnel.get("totals", {})
    t = Table(title="talkcurate funnel", caption=(
        f"{tot.get('sources', 0)} sources ({_hms(tot.get('source_seconds', 0))}) → "
        f"{tot.get('candidate_clips', 0)} candidate clips → {tot.get('kept_clips', 0)} kept "
        f"({_hms(tot.get('kept_seconds', 0))}); run wall {_hms(tot.get('wall_s', 0))}"))
    for col, just in (("stage", "left"), ("unit", "left"), ("in", "right"), ("out", "right"), ("footage in", "right"),
                      ("footage out", "right"), ("rejected (reason: n)", "left"), ("CPU s", "right"),
                      ("CPU s / footage s", "right")):
        t.add_column(col, justify=just)
    for s in funnel.get("stages", []):
        rej = ", ".join(f"{k}: {v}" for k, v in sorted(s["rejected"].items(), key=lambda kv: -kv[1]))
        if s.get("would_reject"):
            rej += (" | " if rej else "") + "would: " + ", ".join(f"{k}: {v}" for k, v in s["would_reject"].items())
        ratio = s.get("cpu_s_per_footage_s")
        t.add_row(s["stage"], s["unit"], str(s["in"]), str(s["out"]), _hms(s["seconds_in"]), _hms(s["seconds_out"]),
                  rej or "-", f"{s['cpu_s']:.1f}", "-" if ratio is None else f"{ratio:.3f}")
    console.print(t)


def report(directory: str, html: bool = True, table: bool = True) -> int:
    """Print the funnel of an output directory (rebuilt from the commit log, so a run in progress or
    interrupted shows what is done) and write DIR/report.html when the HTML report is available."""
    from curation.engine.audit import consolidate
    from curation.engine.output import OutputDir

    root = Path(directory)
    out = OutputDir(root)
    if not out.parts.is_dir():
        raise FileNotFoundError(f"{root} is not an output directory of `curation run` (no audit/parts)")
    import yaml

    stages = []
    mpath = root / "manifest.yaml"
    if mpath.exists():
        stages = [s["name"] for s in (yaml.safe_load(mpath.read_text()) or {}).get("stages", [])
                  if s.get("enabled", True)]
    sel = root / "audit" / "select.json"
    if sel.exists():  # made by `curation select`: its own stage list (with the `select` pseudo-stage)
        stages = json.loads(sel.read_text()).get("stages", stages)
    funnel = consolidate(root, stages)
    if table:
        print_funnel(funnel)
    from curation.engine.runlog import status

    st = status(out)
    print(f"status: {st.text} ({st.why})")
    for name, t in (funnel.get("totals", {}).get("tiers") or {}).items():
        print(f"tier {name}: {t['clips']} clips, {_hms(t['seconds'])}")
    if html:
        from curation.report.html import write_report

        path = write_report(root)
        print(f"report: {path}")
    return 0


def load_funnel(directory: str) -> dict:
    return json.loads((Path(directory) / "audit" / "funnel.json").read_text())
