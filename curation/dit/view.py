"""The training view of curated shards: every kept clip decoded once, stored as what training reads.

`prepare_view(SHARDS, cfg, VIEW)` reads the curation shards (KEY.mp4, KEY.wav, KEY.json) and writes
WebDataset shards of its own, VIEW/view-NNNNNN.tar, one sample per clip:

    KEY.frames.npy   (N, R, R, 3) uint8 RGB: the whole clip at 25 fps, centre-cropped square, scaled to R
    KEY.mel.npy      (4 N, n_mels) float16: log-mel of the aligned audio, 4 mel frames per video frame
    KEY.json         key, n_frames and the source shard

and VIEW/view.json, written last (a view without it is unfinished): the config values the view was made
for (`VIEW_KEYS`, plus the fixed rates), the clip count and the clips left out with a reason. The loader
(data.py) then only reads: it picks a window, slices it from the mapped tar and augments; no decoding.

Members are stored uncompressed, so a clip's frames are a contiguous run of bytes inside the tar: the
loader maps the tar and reads only the window it needs (`scan_view`).
"""

from __future__ import annotations

import concurrent.futures as cf
import glob
import io
import json
import os
import shutil
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import webdataset as wds

from ..media.ffmpeg import MediaError, temp_dir
from .configs import AUDIO_RATE, FPS, MEL_PER_FRAME, Config
from .data import decode_square, mel_window, read_wav

VIEW_FORMAT = "talkcurate-train-view"
VIEW_VERSION = 1
VIEW_FILE = "view.json"
# The config values a view is made for: a config differing in any of them cannot train on it.
VIEW_KEYS = ("resolution", "frames", "n_mels")
SHARD_PATTERN = "view-%06d.tar"
SHARD_MAX_BYTES = 1 << 30


def view_params(cfg: Config) -> dict:
    return {**{k: getattr(cfg, k) for k in VIEW_KEYS}, "fps": FPS, "audio_rate": AUDIO_RATE,
            "mel_per_frame": MEL_PER_FRAME}


def is_view(path: str) -> bool:
    return os.path.isfile(os.path.join(path, VIEW_FILE))


def read_view(path: str) -> dict:
    with open(os.path.join(path, VIEW_FILE)) as f:
        meta = json.load(f)
    if meta.get("format") != VIEW_FORMAT or meta.get("version") != VIEW_VERSION:
        raise ValueError(f"{path} is not a {VIEW_FORMAT} version {VIEW_VERSION} (view.json says "
                         f"{meta.get('format')!r} version {meta.get('version')!r})")
    return meta


def check_view(path: str, cfg: Config) -> dict:
    """The view's metadata, or ValueError when it was made for other config values than `cfg`'s."""
    meta = read_view(path)
    want = view_params(cfg)
    differ = {k: (meta["params"].get(k), v) for k, v in want.items() if meta["params"].get(k) != v}
    if differ:
        detail = ", ".join(f"{k} {have} (config {cfg.name!r} wants {w})" for k, (have, w) in differ.items())
        raise ValueError(f"training view {path} was made for other settings: {detail}; prepare one for this "
                         f"config with `curation prepare-train --config {cfg.name}`")
    if not meta["clips"]:
        raise ValueError(f"training view {path} holds no clip (every clip was left out: see its view.json)")
    return meta


# ---------------------------------------------------------------- prepare

def _npy(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(a), allow_pickle=False)
    return buf.getvalue()


def decode_clip(mp4: bytes, wav: bytes, cfg: Config) -> tuple[np.ndarray, np.ndarray]:
    """(frames (N, R, R, 3) uint8, log-mel (4 N, n_mels) float16) of one curated clip."""
    with temp_dir() as td:
        path = os.path.join(td, "clip.mp4")
        with open(path, "wb") as f:
            f.write(mp4)
        frames = decode_square(path, cfg.resolution)
    mel = mel_window(read_wav(wav), 0, len(frames), cfg.n_mels).numpy().astype(np.float16)
    return frames, mel


def _curated_samples(shards_dir: str) -> Iterator[dict]:
    urls = sorted(glob.glob(os.path.join(shards_dir, "*.tar")))
    if not urls:
        raise FileNotFoundError(f"no *.tar shards in {shards_dir}")
    wanted = lambda name: name.endswith((".mp4", ".wav", ".json"))  # noqa: E731
    for s in wds.tarfile_to_samples(select_files=wanted)(iter([{"url": u} for u in urls])):
        yield s


def _count_samples(shards_dir: str) -> int:
    n = 0
    for u in sorted(glob.glob(os.path.join(shards_dir, "*.tar"))):
        with tarfile.open(u) as t:
            n += sum(1 for m in t if m.name.endswith(".json"))
    return n


def _prepare_one(sample: dict, cfg: Config) -> tuple[dict | None, dict | None]:
    """(the view sample, None) or (None, the reason the clip is left out)."""
    key = sample["__key__"]
    missing = [m for m in ("mp4", "wav") if m not in sample]
    if missing:
        return None, {"key": key, "reason": "missing", "message": f"no {', '.join(missing)} in the shard"}
    try:
        frames, mel = decode_clip(sample["mp4"], sample["wav"], cfg)
    except (MediaError, ValueError, RuntimeError) as e:
        return None, {"key": key, "reason": "unreadable", "message": str(e)[:300]}
    if len(frames) < cfg.frames:
        return None, {"key": key, "reason": "too_short",
                      "message": f"{len(frames)} frames < the config's window of {cfg.frames}"}
    meta = {"key": key, "n_frames": len(frames), "source_shard": os.path.basename(sample.get("__url__", ""))}
    return {"__key__": key, "frames.npy": _npy(frames), "mel.npy": _npy(mel),
            "json": json.dumps(meta).encode()}, None


def prepare_view(shards_dir: str, cfg: Config, out_dir: str, *, workers: int | None = None,
                 progress: bool = True) -> dict:
    """Write the training view of `shards_dir` for `cfg` to `out_dir` (which must not hold one) and return
    its view.json. Clips are decoded by `workers` ffmpeg processes at once (default: the CPU count); a clip
    that cannot be decoded or is shorter than the window is left out with a reason, never stops the run.
    The view appears under its name only when complete."""
    if is_view(out_dir):
        raise FileExistsError(f"{out_dir} already holds a training view")
    if os.path.exists(out_dir) and os.listdir(out_dir):
        raise FileExistsError(f"{out_dir} exists and is not empty")
    workers = workers or os.cpu_count() or 1
    total = _count_samples(shards_dir)
    tmp = out_dir.rstrip("/") + f".partial-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    clips, left_out = [], []
    bar = _Progress(total, f"preparing the {cfg.name} view ({cfg.resolution} px)", progress)
    try:
        with wds.ShardWriter(os.path.join(tmp, SHARD_PATTERN), maxsize=SHARD_MAX_BYTES, maxcount=1 << 30,
                             verbose=0) as sink, cf.ThreadPoolExecutor(workers) as pool:
            # Threads suffice: each decode is an ffmpeg process; a bounded window of futures keeps the
            # clips in shard order and the memory to `2 * workers` clips.
            pending: list[cf.Future] = []

            def drain(limit: int) -> None:
                while len(pending) > limit:
                    out, skip = pending.pop(0).result()
                    if out is None:
                        left_out.append(skip)
                    else:
                        sink.write(out)
                        clips.append(json.loads(out["json"]))
                    bar.advance()

            for s in _curated_samples(shards_dir):
                pending.append(pool.submit(_prepare_one, s, cfg))
                drain(2 * workers)
            drain(0)
        shards = sorted(os.path.basename(p) for p in glob.glob(os.path.join(tmp, "*.tar")))
        meta = {"format": VIEW_FORMAT, "version": VIEW_VERSION, "config": cfg.name, "params": view_params(cfg),
                "source": os.path.abspath(shards_dir), "shards": shards, "clips": len(clips),
                "frames": sum(c["n_frames"] for c in clips), "left_out": left_out}
        with open(os.path.join(tmp, VIEW_FILE), "w") as f:
            json.dump(meta, f, indent=1)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        bar.close()
    if os.path.isdir(out_dir):
        os.rmdir(out_dir)
    os.replace(tmp, out_dir)
    return meta


class _Progress:
    """A rich progress bar on stderr (nothing when disabled)."""

    def __init__(self, total: int, what: str, enabled: bool):
        self._p = None
        if enabled:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn, TimeRemainingColumn

            self._p = Progress("[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(),
                               TimeElapsedColumn(), TimeRemainingColumn(), console=Console(stderr=True))
            self._p.start()
            self._task = self._p.add_task(what, total=total)

    def advance(self) -> None:
        if self._p is not None:
            self._p.advance(self._task)

    def close(self) -> None:
        if self._p is not None:
            self._p.stop()
            self._p = None


# ---------------------------------------------------------------- read

@dataclass(frozen=True)
class ViewClip:
    key: str
    shard: int  # index into ViewIndex.paths
    n_frames: int
    frames_offset: int  # byte offset of the (N, R, R, 3) uint8 array in the tar
    mel_offset: int  # byte offset of the (4 N, n_mels) float16 array in the tar


def _npy_data_offset(f, member: tarfile.TarInfo) -> tuple[int, tuple, np.dtype]:
    f.seek(member.offset_data)
    version = np.lib.format.read_magic(f)
    read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    shape, fortran, dtype = read_header(f)
    if fortran:
        raise ValueError(f"{member.name}: Fortran-ordered array")
    return f.tell(), shape, dtype


def scan_view(view_dir: str, cfg: Config) -> tuple[list[str], list[ViewClip]]:
    """The view's tar paths and, per clip, where its arrays lie in them (checked against `cfg`)."""
    meta = check_view(view_dir, cfg)
    paths = [os.path.join(view_dir, s) for s in meta["shards"]]
    r = cfg.resolution
    clips = []
    for i, p in enumerate(paths):
        found: dict[str, dict] = {}
        with open(p, "rb") as f, tarfile.open(fileobj=f) as t:
            for m in t:
                key, _, ext = m.name.partition(".")
                if ext in ("frames.npy", "mel.npy"):
                    off, shape, dtype = _npy_data_offset(f, m)
                    found.setdefault(key, {})[ext] = (off, shape, dtype)
        for key, arrays in found.items():
            (fo, fs, fd), (mo, ms, md) = arrays["frames.npy"], arrays["mel.npy"]
            if fd != np.uint8 or fs[1:] != (r, r, 3) or md != np.float16 or ms != (MEL_PER_FRAME * fs[0], cfg.n_mels):
                raise ValueError(f"{p}: {key} holds frames {fs} {fd} and mel {ms} {md}, not what view.json says")
            clips.append(ViewClip(key, i, fs[0], fo, mo))
    if len(clips) != meta["clips"]:
        raise ValueError(f"{view_dir}: view.json counts {meta['clips']} clips, the shards hold {len(clips)}")
    return paths, clips
