"""`curation select --report PAGE`: the funnel before and after a selection as a self-contained HTML page."""

from __future__ import annotations

import html
from pathlib import Path


def _bar(frac: float, cls: str) -> str:
    return f'<div class="bar {cls}" style="width:{max(0.0, min(1.0, frac)) * 100:.1f}%"></div>'


def write_select_report(path: str | Path, src, res) -> Path:
    top = max([r["out"] for r in res.old] + [1])
    rows = []
    for o, n in zip(res.old, res.new):
        rej = ", ".join(f"{html.escape(k)}: {v}" for k, v in sorted(n["rejected"].items(), key=lambda kv: -kv[1]))
        rows.append(
            f'<tr data-stage="{html.escape(o["stage"])}" data-before="{o["out"]}" data-after="{n["out"]}">'
            f'<td>{html.escape(o["stage"])}</td><td class="n">{o["out"]}</td><td class="n">{n["out"]}</td>'
            f'<td class="n">{n["out"] - o["out"]:+d}</td><td class="n">{o["seconds_out"] / 3600:.3f}</td>'
            f'<td class="n">{n["seconds_out"] / 3600:.3f}</td>'
            f'<td class="bars">{_bar(o["out"] / top, "before")}{_bar(n["out"] / top, "after")}</td>'
            f'<td>{rej or "-"}</td></tr>')
    tiers = "".join(f'<tr data-tier="{html.escape(t)}"><td>{html.escape(t)}</td><td class="n">{k}</td>'
                    f'<td class="n">{s / 3600:.3f}</td></tr>' for t, (k, s) in res.tiers.items())
    missing = "".join(f"<li>{html.escape(k)}: {v} clip(s)</li>" for k, v in sorted(res.missing.items()))
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>talkcurate select: {html.escape(str(src.root))}</title>
<style>body{{font:14px system-ui,sans-serif;margin:24px}} table{{border-collapse:collapse}} td,th{{padding:4px 10px;
border-bottom:1px solid #ddd}} .n{{text-align:right}} .bars{{width:240px}} .bar{{height:7px;margin:1px 0}}
.before{{background:#999}} .after{{background:#2a7}}</style></head><body>
<h1>Selection from {html.escape(str(src.root))}</h1>
<p>Clips out of each stage before (grey) and after (green) the new thresholds; nothing was decoded or run.</p>
<table id="funnel"><tr><th>stage</th><th>clips before</th><th>after</th><th>Δ</th><th>kept h before</th><th>after</th>
<th></th><th>rejected after (reason: n)</th></tr>{''.join(rows)}</table>
{f'<h2>Tiers</h2><table id="tiers"><tr><th>tier</th><th>clips</th><th>hours</th></tr>{tiers}</table>' if tiers else ''}
{f'<h2>Missing measurements</h2><p>A threshold on a score a clip lacks fails that clip:</p><ul id="missing">{missing}</ul>' if missing else ''}
</body></html>"""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(page, encoding="utf-8")
    return p
