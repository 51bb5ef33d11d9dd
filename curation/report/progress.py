"""The terminal during `curation run`: one progress display of the job, every library's log lines in a file.

`session(verbose)` wraps a run in the command. Once the pipeline has created the output directory it calls
`output_ready(DIR, n_sources)`; from then on the process's stdout and stderr (file descriptors 1 and 2, so
also what C++ code writes: Ray's core worker, TensorFlow Lite, MediaPipe, OpenCV, and the worker lines Ray
forwards to the driver) go to DIR/logs/run.log, and the terminal shows only this module's display. With
`verbose` the same lines also reach the terminal (a tee). The pipeline reports every finished record with
`record(rec)`: the display shows sources and clips done, the footage kept, each stage's rate (footage
seconds per CPU second, from the records' own timings) and an ETA. On a terminal it is a live rich line;
piped (`make demo | tee`) it is a plain line each time another fifth of the sources is done (at most one
per PLAIN_MIN_S), and one after a quiet spell (PLAIN_QUIET_S, doubling after each such line), so a log
stays short whatever the run's length (about a dozen lines for an hour).

Outside a session (a run from Python, the tests) every call here is a no-op."""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
from pathlib import Path

PLAIN_MIN_S = 10.0
PLAIN_QUIET_S = 120.0
LOG_NAME = "logs/run.log"

_active: "Session | None" = None


def _fmt_s(s: float) -> str:
    s = max(0.0, float(s))
    if s >= 3600:
        return f"{s / 3600:.1f} h"
    if s >= 60:
        return f"{int(s // 60)} min {int(s % 60):02d} s"
    return f"{s:.0f} s"


class Stats:
    """What the display shows, from the records the driver receives."""

    def __init__(self, n_sources: int = 0):
        self.n_sources = n_sources
        self.t0 = time.time()
        self.t_first: float | None = None  # when the first source was done (the pipeline full from then on)
        self.siblings: dict[str, int] = {}  # source -> clips received
        self.done_sources = 0
        self.clips = 0
        self.kept = 0
        self.kept_s = 0.0
        self.stage_cpu: dict[str, float] = {}
        self.stage_footage: dict[str, float] = {}

    def add(self, rec) -> None:
        before = self.done_sources
        self._add(rec)
        if self.done_sources and not before:
            self.t_first = time.time()

    def _add(self, rec) -> None:
        if rec.is_source:
            self.done_sources += 1
        else:
            self.clips += 1
            got = self.siblings.get(rec.source, 0) + 1
            self.siblings[rec.source] = got
            if got >= rec.n_siblings:
                self.done_sources += 1
                self.siblings.pop(rec.source, None)
            if rec.alive:
                self.kept += 1
                self.kept_s += rec.duration_s
        for stage, (_wall, cpu) in rec.timings.items():
            # source-level stages (probe, scenes) ride on the first clip (or the rejected source): they saw the
            # whole source; clip stages saw the clip
            src_level = stage in ("probe", "scenes")
            if src_level and not rec.is_source and rec.clip_index > 0:
                continue
            footage = float(rec.probe.get("duration_s") or 0.0) if src_level else rec.duration_s
            self.stage_cpu[stage] = self.stage_cpu.get(stage, 0.0) + float(cpu or 0.0)
            self.stage_footage[stage] = self.stage_footage.get(stage, 0.0) + footage

    def eta_s(self) -> float | None:
        """From the rate since the first source was done (before it the pipeline was filling up)."""
        if self.done_sources >= self.n_sources:
            return 0.0
        if self.done_sources < 2 or self.t_first is None:
            return None
        rate = (self.done_sources - 1) / max(1e-6, time.time() - self.t_first)
        return (self.n_sources - self.done_sources) / rate

    def rates(self) -> str:
        return " ".join(f"{st} {self.stage_footage[st] / c:.1f}x" for st, c in self.stage_cpu.items() if c > 0)

    def short(self) -> str:
        eta = self.eta_s()
        return (f"sources {self.done_sources}/{self.n_sources} | clips {self.clips}, kept {self.kept} "
                f"({_fmt_s(self.kept_s)}) | {_fmt_s(time.time() - self.t0)}, ETA {'-' if eta is None else _fmt_s(eta)}")

    def line(self) -> str:
        return f"{self.short()} | footage-s per CPU-s: {self.rates() or '-'}"


class _Tee(threading.Thread):
    """Copy everything written to a pipe into the log file and (verbose) to the terminal."""

    def __init__(self, rfd: int, log, term_fd: int | None):
        super().__init__(daemon=True, name="talkcurate-log-tee")
        self.rfd, self.log, self.term_fd = rfd, log, term_fd

    def run(self) -> None:
        while True:
            try:
                data = os.read(self.rfd, 1 << 16)
            except OSError:
                return
            if not data:
                return
            self.log.write(data)
            self.log.flush()
            if self.term_fd is not None:
                with contextlib.suppress(OSError):
                    os.write(self.term_fd, data)


class Session:
    def __init__(self, verbose: bool = False):
        self.verbose = verbose
        self.stats = Stats()
        self.saved: dict[int, int] = {}
        self.console = None
        self.live = None
        self.log_path: Path | None = None
        self._tee: _Tee | None = None
        self._log = None
        self._last_plain = 0.0
        self._last_decile = -1
        self._quiet_s = PLAIN_QUIET_S
        self._stop = threading.Event()
        self._ticker: threading.Thread | None = None
        self._lock = threading.Lock()
        self._wfd: int | None = None

    # -- the terminal ---------------------------------------------------------------------------------
    def _open_console(self) -> None:
        from rich.console import Console

        term = os.fdopen(os.dup(self.saved.get(1, 1)), "w", buffering=1, encoding="utf-8", errors="replace")
        self.console = Console(file=term, width=None if term.isatty() else 160, log_path=False)
        if self.console.is_terminal:
            from rich.live import Live

            self.live = Live(self._renderable(), console=self.console, transient=False, refresh_per_second=2,
                             redirect_stdout=False, redirect_stderr=False)
            self.live.start()

    def output_ready(self, root: Path, n_sources: int | None) -> None:
        self.stats = Stats(n_sources or 0)
        self.log_path = Path(root) / LOG_NAME
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        sys.stdout.flush()
        sys.stderr.flush()
        self._log = open(self.log_path, "ab", buffering=0)
        for fd in (1, 2):
            self.saved[fd] = os.dup(fd)
        rfd, self._wfd = os.pipe()
        self._tee = _Tee(rfd, self._log, self.saved[2] if self.verbose else None)
        self._tee.start()
        for fd in (1, 2):
            os.dup2(self._wfd, fd)
        self._open_console()
        todo = f"{self.stats.n_sources} source(s) to process" if self.stats.n_sources else "sources read window by window"
        self.console.print(f"curation run: {todo}; library logs: "
                           f"{self.log_path}" + ("" if self.verbose else " (-v shows them here)"))
        self.refresh(force=True)
        # between records too (the first clip arrives only once it has passed every stage): the elapsed time,
        # and piped, a line after PLAIN_QUIET_S without one
        self._ticker = threading.Thread(target=self._tick, daemon=True, name="talkcurate-progress")
        self._ticker.start()

    def _renderable(self):
        """Two lines for a terminal: a bar with sources, clips, kept footage, time and ETA; the stage rates."""
        from rich.console import Group
        from rich.progress_bar import ProgressBar
        from rich.table import Table
        from rich.text import Text

        st = self.stats
        row = Table.grid(padding=(0, 1))
        row.add_row(ProgressBar(total=max(1, st.n_sources), completed=st.done_sources, width=20),
                    Text(st.short(), overflow="ellipsis", no_wrap=True))
        rates = Text("footage-s per CPU-s: " + (st.rates() or "-"), style="dim", overflow="ellipsis", no_wrap=True)
        return Group(row, rates)

    def _tick(self) -> None:
        while not self._stop.wait(1.0 if self.live is not None else 5.0):
            self.refresh()

    def record(self, rec) -> None:
        with self._lock:
            self.stats.add(rec)
            self._refresh(False)

    def refresh(self, force: bool = False) -> None:
        with self._lock:
            self._refresh(force)

    def _refresh(self, force: bool) -> None:
        if self.console is None:
            return
        if self.live is not None:
            self.live.update(self._renderable())
        else:
            st = self.stats
            step = (5 * st.done_sources) // max(1, st.n_sources)
            since = time.time() - self._last_plain
            stepped = step > self._last_decile and since >= PLAIN_MIN_S
            if force or stepped or since >= self._quiet_s:
                self._quiet_s = PLAIN_QUIET_S if (stepped or force) else 2 * self._quiet_s
                self._last_plain = time.time()
                self._last_decile = step
                self.console.print("progress: " + st.line(), soft_wrap=True)

    def close(self) -> None:
        self._stop.set()
        if self._ticker is not None:
            self._ticker.join(timeout=10)
        if self.console is not None:
            if self.live is not None:
                self.live.update(self._renderable())
                self.live.stop()
            elif self.stats.done_sources:
                self.console.print("done:     " + self.stats.line(), soft_wrap=True)
        if not self.saved:
            return
        with contextlib.suppress(Exception):
            import ray

            if ray.is_initialized():  # its shutdown chatter goes to the log too
                ray.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        for fd, saved in self.saved.items():
            os.dup2(saved, fd)
            os.close(saved)
        self.saved.clear()
        if self._wfd is not None:
            os.close(self._wfd)  # the last writer: the tee sees end of file
        if self._tee is not None:
            self._tee.join(timeout=2)
        if self._log is not None:
            self._log.close()
        if self.console is not None:
            with contextlib.suppress(Exception):
                self.console.file.close()


@contextlib.contextmanager
def session(verbose: bool = False):
    """The display for one `curation run` in this process."""
    global _active
    s = Session(verbose)
    _active = s
    try:
        yield s
    finally:
        _active = None
        s.close()


def add_sources(n: int) -> None:
    """More sources to process (the listing is read window by window)."""
    if _active is not None and _active.stats is not None:
        _active.stats.n_sources += n
        if getattr(_active, "live", None) is not None and getattr(_active, "task", None) is not None:
            _active.live.update(_active.task, total=max(1, _active.stats.n_sources))


def output_ready(root, n_sources: int | None = None) -> None:
    if _active is not None:
        _active.output_ready(Path(root), n_sources)


def record(rec) -> None:
    if _active is not None:
        _active.record(rec)
