"""`curation report DIR`: the terminal funnel and DIR/report.html, looked at in headless Chromium as a person
would (rendered DOM, screenshot, console), on a finished run, a run in progress, and a --score-only run."""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pandas as pd
import pytest
from conftest import FOOTAGE, run_cli

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--hide-scrollbars"]


def chromium_bin() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if p := shutil.which(name):
            return p
    pytest.fail("headless Chromium is needed for the report tests: apt-get install -y chromium")


def chromium(page: Path, tmp: Path, *args: str) -> subprocess.CompletedProcess:
    ud = tmp / f"chromium-profile-{len(list(tmp.glob('chromium-profile-*')))}"
    return subprocess.run([chromium_bin(), *CHROMIUM_FLAGS, f"--user-data-dir={ud}", "--enable-logging=stderr",
                           "--v=0", *args, page.resolve().as_uri()], capture_output=True, text=True, timeout=180)


def console_errors(stderr: str) -> list[str]:
    """Console messages (the page logs none unless something broke) and uncaught script errors."""
    return [line for line in stderr.splitlines() if ":CONSOLE" in line or "Uncaught" in line]


class Dom(HTMLParser):
    """The rendered DOM: text of every element with a data-k attribute, and attributes of interesting ones."""

    def __init__(self, text: str):
        super().__init__()
        self.k: dict[str, str] = {}
        self.v: dict[str, str] = {}
        self.attrs_of: list[tuple[str, dict]] = []
        self.root_attrs: dict = {}
        self._open: list[tuple[str, str]] = []
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.attrs_of.append((tag, a))
        if tag == "html":
            self.root_attrs = a
        if tag in ("td", "b"):
            self._open.append((a.get("data-k"), ""))
            if "data-k" in a and "data-v" in a:
                self.v[a["data-k"]] = a["data-v"]

    def handle_data(self, data):
        if self._open:
            k, t = self._open[-1]
            self._open[-1] = (k, t + data)

    def handle_endtag(self, tag):
        if tag in ("td", "b") and self._open:
            k, t = self._open.pop()
            if k is not None:
                self.k[k] = t.strip()

    def all(self, tag: str, cls: str | None = None) -> list[dict]:
        return [a for t, a in self.attrs_of if t == tag and (cls is None or cls in (a.get("class") or "").split())]


def hours_text(seconds: float) -> str:
    return f"{seconds / 3600:.4f}"


def check_funnel_shown(dom: Dom, f: dict) -> None:
    """Every funnel number the page shows is the one funnel.json holds."""
    tot = f["totals"]
    assert dom.k["totals.sources"] == str(tot["sources"])
    assert dom.k["totals.candidate_clips"] == str(tot["candidate_clips"])
    assert dom.k["totals.kept_clips"] == str(tot["kept_clips"])
    assert dom.k["totals.kept_hours"] == hours_text(tot["kept_seconds"]) + " h"
    assert math.isclose(float(dom.v["totals.kept_hours"]), tot["kept_hours"], rel_tol=1e-9, abs_tol=1e-12)
    assert f["stages"], "funnel has no stages"
    for s in f["stages"]:
        n = s["stage"]
        assert dom.k[f"stages.{n}.in"] == str(s["in"]), n
        assert dom.k[f"stages.{n}.out"] == str(s["out"]), n
        assert dom.k[f"stages.{n}.hours_in"] == hours_text(s["seconds_in"]), n
        assert dom.k[f"stages.{n}.hours_out"] == hours_text(s["seconds_out"]), n
        assert math.isclose(float(dom.v[f"stages.{n}.hours_in"]), s["seconds_in"], rel_tol=1e-9, abs_tol=1e-9)
        assert dom.k[f"stages.{n}.rejected_total"] == str(sum(s["rejected"].values())), n
        ratio = s["cpu_s_per_footage_s"]
        assert dom.k[f"stages.{n}.cpu_s_per_footage_s"] == ("-" if ratio is None else f"{ratio:.3f}"), n
        for reason, count in s["rejected"].items():
            assert dom.k[f"rejected.{n}.{reason}"] == str(count), (n, reason)
        for reason, count in s.get("would_reject", {}).items():
            assert dom.k[f"would_reject.{n}.{reason}"] == str(count), (n, reason)
    shown_rejections = {k for k in dom.k if k.startswith("rejected.")}
    assert shown_rejections == {f"rejected.{s['stage']}.{r}" for s in f["stages"] for r in s["rejected"]}


def render_and_check(page: Path, tmp: Path, screenshot: Path | None = None, min_images: int = 2) -> Dom:
    """Load the page in Chromium: no console error, every embedded image decoded, a non-blank screenshot."""
    p = chromium(page, tmp, "--dump-dom")
    assert p.returncode == 0, p.stderr[-3000:]
    assert not console_errors(p.stderr), console_errors(p.stderr)
    dom = Dom(p.stdout)
    ok, total, expected = map(int, dom.root_attrs["data-images"].split("/"))
    assert ok == total == expected and total >= min_images, dom.root_attrs["data-images"]
    if screenshot is not None:
        s = chromium(page, tmp, "--window-size=1400,2400", f"--screenshot={screenshot}")
        assert s.returncode == 0 and screenshot.is_file(), s.stderr[-3000:]
        from PIL import Image, ImageStat

        im = Image.open(screenshot).convert("L")
        assert im.size == (1400, 2400)
        assert ImageStat.Stat(im).stddev[0] > 10, "the screenshot is blank"
    return dom


def test_report_on_pipeline_output(pipeline_output, pipeline_input, tmp_path):
    p = run_cli("report", str(pipeline_output))
    assert "talkcurate funnel" in p.stdout  # the rich table is still printed
    page = pipeline_output / "report.html"
    assert f"report: {page}" in p.stdout and page.is_file()
    text = page.read_text(encoding="utf-8")
    # self-contained: no URL that a browser would fetch
    assert not re.search(r"""(?:src|href)\s*=\s*["']?(?:https?:)?//""", text)
    assert not re.search(r"@import|url\(\s*['\"]?http", text)

    dom = render_and_check(page, tmp_path, tmp_path / "report.png")
    f = json.loads((pipeline_output / "audit" / "funnel.json").read_text())
    check_funnel_shown(dom, f)

    clips = pd.read_parquet(pipeline_output / "audit" / "clips.parquet")
    # a histogram for every numeric score, and a threshold line on every score some check rejected on
    hists = {a["data-score"]: a for a in dom.all("div", "hist")}
    checked = set(clips["message"].dropna().str.extract(r"^(\w+)=\S+, needs ")[0].dropna())
    assert checked, "the pipeline run rejected nothing through a score check"
    for score in checked:
        assert score in hists, score
        assert int(hists[score]["data-thresholds"]) >= 1, score
        assert "rejected, fails this threshold" in hists[score]["data-groups"], score
    import yaml

    person = {s["name"]: s.get("params", {}) for s in yaml.safe_load((pipeline_output / "manifest.yaml").read_text())
              ["stages"]}.get("person", {})
    for score, key in (("face_px", "min_face_px"), ("face_any_frac", "min_face_frac"), ("multi_frac", "max_multi_frac")):
        if key in person and score in clips:  # the line is the manifest's value, named by its params key
            assert int(hists[score]["data-thresholds"]) >= 1, score
            assert re.search(rf'data-score="{score}".*?threshold [^<]*{person[key]:g} \(person\.{key}\)', text, re.S)

    # contact sheet: thumbnails for kept clips and for each non-probe rejection reason; probe rejects listed
    kept_cards = dom.all("div", "kept")
    assert len(kept_cards) == min(8, int((clips["status"] == "kept").sum())) > 0
    rej = clips[clips["status"].eq("rejected") & clips["stage"].ne("probe")]
    assert len(dom.all("div", "rejected")) >= rej.groupby(["stage", "reason"]).ngroups
    thumbs = [a for a in dom.all("img") if (a.get("src") or "").startswith("data:image/jpeg;base64,")]
    assert len(thumbs) >= len(kept_cards)
    for name, reason in pipeline_input[1].items():
        if reason != "too_short":  # a copy of A4: listed by its own name too
            assert name in text or name.replace("'", "&#39;").replace('"', "&#34;") in text, name
    for name in ("empty.mp4", "random_bytes.mp4", "audio_only.mp4"):
        assert re.search(rf"<td[^>]*>{re.escape(name)}</td><td>(unreadable|no_video)</td>", text), name

    # manifest, wall time and CPU cost
    assert "min_face_px" in text and "name: default" in text
    runs = [json.loads(x) for x in (pipeline_output / "audit" / "runs.jsonl").read_text().splitlines()]
    assert 'id="wall-total"' in text and 'status: <b id="run-status">finished</b>' in text.replace("\n", " ")
    assert runs and runs[-1]["wall_s"] > 0


def _split_commit(src: Path, dst: Path) -> tuple[list[str], list[str]]:
    """`dst`: an output directory as a run in progress leaves it: the first half of `src`'s sources committed,
    the second half's clips part written but its sources part still a temporary file, a shard being written,
    no funnel.json, no runs.jsonl. Returns (committed sources, uncommitted sources)."""
    from curation.engine.output import OutputDir

    s_out, d_out = OutputDir(src), OutputDir(dst)
    d_out.create()
    shutil.copy(src / "manifest.yaml", dst / "manifest.yaml")
    clips, sources = s_out.read_parts("clips"), s_out.read_parts("sources")
    names = sorted(sources["source"])
    first, second = names[: len(names) // 2], names[len(names) // 2:]
    d_out.commit(0, {}, clips[clips["source"].isin(first)], sources[sources["source"].isin(first)])
    clips[clips["source"].isin(second)].to_parquet(d_out.parts / "clips-000001.parquet", index=False)
    sources[sources["source"].isin(second)].to_parquet(d_out.parts / "sources-000001.parquet.tmp", index=False)
    (d_out.shards / "shard-000007.tar.tmp").write_bytes(b"\0" * 1024)
    return first, second


def test_report_on_run_in_progress(pipeline_output, tmp_path):
    from curation.engine.audit import funnel, read_runs
    from curation.engine.output import OutputDir
    from curation.report.html import write_report

    d = tmp_path / "inprogress"
    first, second = _split_commit(pipeline_output, d)
    assert first and second

    # The module alone (what a person gets from `write_report`): reads committed parts, writes only report.html
    page = write_report(d)
    assert page == d / "report.html" and page.is_file()
    assert not (d / "audit" / "funnel.json").exists()
    assert (d / "audit" / "parts" / "sources-000001.parquet.tmp").exists()  # a running pipeline's file: kept
    assert (d / "shards" / "shard-000007.tar.tmp").exists()
    assert (d / "audit" / "parts" / "clips-000001.parquet").exists()
    out = OutputDir(d)
    stages = [s["stage"] for s in json.loads((pipeline_output / "audit" / "funnel.json").read_text())["stages"]]
    expected = funnel(out.read_parts("clips"), out.read_parts("sources"), stages, read_runs(out))
    assert expected["totals"]["sources"] == len(first)
    dom = render_and_check(page, tmp_path)
    check_funnel_shown(dom, expected)
    text = page.read_text(encoding="utf-8")
    assert 'id="run-status">in progress or interrupted' in text
    assert "uncommitted parts" in text and "No finished run recorded yet" in text
    for src in second:  # nothing of the uncommitted half is shown
        assert Path(src).name not in text, src

    # Right after a run started: the manifest copied, nothing committed yet
    empty = tmp_path / "just_started"
    OutputDir(empty).create()
    shutil.copy(pipeline_output / "manifest.yaml", empty / "manifest.yaml")
    dom = render_and_check(write_report(empty), tmp_path, min_images=0)
    assert dom.k["totals.sources"] == "0"
    assert "No committed sources yet" in (empty / "report.html").read_text(encoding="utf-8")

    # The command: consolidates the committed parts (funnel.json appears) and shows the same numbers
    p = run_cli("report", str(d))
    assert "talkcurate funnel" in p.stdout
    f = json.loads((d / "audit" / "funnel.json").read_text())
    assert f["totals"]["sources"] == len(first)
    check_funnel_shown(render_and_check(d / "report.html", tmp_path), f)
    assert (d / "audit" / "parts" / "sources-000001.parquet.tmp").exists()


@pytest.fixture(scope="module")
def score_only_output(tmp_path_factory) -> Path:
    """A --score-only run on two short clips: one that passes every threshold, one the person stage would drop."""
    d = tmp_path_factory.mktemp("score_only_in")
    for name in ("A1_hdtf_bob_menendez_talking_8s.mp4", "D1_noface_cup_hand_quiet_audio_8s.mp4"):
        (d / name).symlink_to(FOOTAGE / name)
    out = tmp_path_factory.mktemp("score_only") / "out"
    run_cli("run", "--input", str(d), "--output", str(out), "--score-only", "--num-cpus", "2")
    return out


def test_report_on_score_only_run(score_only_output, tmp_path):
    out = score_only_output
    p = run_cli("report", str(out))
    assert "talkcurate funnel" in p.stdout and "would:" in p.stdout
    f = json.loads((out / "audit" / "funnel.json").read_text())
    clips = pd.read_parquet(out / "audit" / "clips.parquet")
    tables = json.loads((out / "audit" / "thresholds.json").read_text())
    hard = {(r["stage"], r["reason"]) for r in tables["hard_reasons"]}
    hard |= {(r["stage"], r["reason"]) for r in tables["thresholds"] if r["hard"]}

    assert clips["shard"].isna().all() and not any((out / "shards").glob("*.tar"))  # no shards in score-only
    rejected = clips[clips["status"] == "rejected"]
    assert all(pair in hard for pair in zip(rejected["stage"], rejected["reason"]))  # no threshold applied
    d1 = clips[clips["source"].str.contains("D1_noface")]
    assert d1["would_reject"].str.contains("person:no_face").all()
    assert f["stages"][[s["stage"] for s in f["stages"]].index("person")]["would_reject"].get("no_face") == 1

    page = out / "report.html"
    dom = render_and_check(page, tmp_path, tmp_path / "score_only.png")
    check_funnel_shown(dom, f)
    text = page.read_text(encoding="utf-8")
    assert 'id="score-only"' in text
    # the contact sheet has the clip a threshold would drop, with its thumbnail
    assert "would be rejected at person: no_face" in text
    assert dom.all("div", "would")
    section = text.split("would be rejected at person: no_face", 1)[1].split("<h3>", 1)[0]
    assert re.search(r'class="thumb would".*?<img alt="D1_noface[^"]*" src="data:image/jpeg;base64,', section, re.S)
    assert "A1_hdtf" not in section
    # the histogram of the score behind it shows the clip as "would be rejected", the threshold drawn
    hist = {a["data-score"]: a for a in dom.all("div", "hist")}["face_any_frac"]
    assert hist["data-groups"] == "kept:1;would be rejected, fails this threshold:1"
    assert hist["data-thresholds"] == "1"
    # the steps table shows what would pass: the kept step counts both clips, one would pass every threshold
    would_pass = clips["status"].eq("kept") & clips["would_reject"].isna()
    assert would_pass.sum() == 1 and clips.loc[would_pass, "source"].str.contains("A1_hdtf").all()
    assert dom.k["would_pass.totals.kept_clips"] == "1"
