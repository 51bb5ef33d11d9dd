"""Media I/O over ffmpeg: probe, streaming frame decode at the rate and size a stage needs, audio decode,
and clip encoding. ffmpeg is always called with an argument list, never through a shell."""

from __future__ import annotations

import collections
import contextlib
import json
import os
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

FFMPEG = os.environ.get("CURATION_FFMPEG", "ffmpeg")
FFPROBE = os.environ.get("CURATION_FFPROBE", "ffprobe")


class MediaError(RuntimeError):
    """ffmpeg/ffprobe could not read or write a file; `reason` is the audit reason."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


CACHE_DIR = os.environ.get("CURATION_CACHE", os.path.join(tempfile.gettempdir(), "talkcurate-cache"))


def temp_dir() -> tempfile.TemporaryDirectory:
    """A scratch directory for one ffmpeg job, named after this process so that one left behind by a killed
    worker can be told from one in use (sweep_stale_temp_dirs)."""
    return tempfile.TemporaryDirectory(prefix=f"talkcurate-{os.getpid()}-")


def sweep_stale_temp_dirs() -> int:
    """Remove this machine's scratch directories whose process is gone (a worker killed mid-encode)."""
    import glob
    import re
    import shutil

    removed = 0
    for d in glob.glob(os.path.join(tempfile.gettempdir(), "talkcurate-*-*")):
        m = re.fullmatch(r"talkcurate-(\d+)-[^/]*", os.path.basename(d))
        if not m or not os.path.isdir(d):
            continue
        try:
            os.kill(int(m.group(1)), 0)
            continue  # alive (or another user's: PermissionError below)
        except ProcessLookupError:
            pass
        except PermissionError:
            continue
        shutil.rmtree(d, ignore_errors=True)
        removed += 1
    return removed


def local_path(path: str) -> str:
    """A path ffmpeg can open: file:// stripped; other URIs (s3://, gs://, ...) fetched once through
    pyarrow.fs into a node-local cache (so every node of a cluster reads them the same way)."""
    if path.startswith("file://"):
        return path[len("file://"):]
    if "://" not in path or path.startswith(("http://", "https://")):
        return path
    import hashlib

    from pyarrow import fs

    ext = os.path.splitext(path)[1][:8]
    dest = os.path.join(CACHE_DIR, hashlib.sha1(path.encode()).hexdigest() + ext)
    if not os.path.exists(dest):
        os.makedirs(CACHE_DIR, exist_ok=True)
        filesystem, p = fs.FileSystem.from_uri(path)
        tmp = f"{dest}.{os.getpid()}.tmp"
        with filesystem.open_input_stream(p) as src, open(tmp, "wb") as dst:
            while chunk := src.read(1 << 22):
                dst.write(chunk)
        os.replace(tmp, dest)
    return dest


def _frac(s: str | None) -> float:
    if not s or s in ("0/0", "N/A"):
        return 0.0
    if "/" in s:
        n, d = s.split("/", 1)
        try:
            return float(n) / float(d) if float(d) else 0.0
        except ValueError:
            return 0.0
    try:
        return float(s)
    except ValueError:
        return 0.0


@dataclass
class ProbeInfo:
    duration_s: float
    fps: float
    width: int  # display width (after rotation)
    height: int
    rotation: int
    vcodec: str | None
    acodec: str | None
    audio_rate: int | None
    audio_channels: int | None
    n_frames: int | None
    has_video: bool
    has_audio: bool
    sar: float = 1.0

    def as_dict(self) -> dict:
        return dict(self.__dict__)


# Below this the container's timing is broken (a frame every few seconds is no video of someone talking).
MIN_PLAUSIBLE_FPS = 1.0


def _rotation(stream: dict) -> int:
    rot = 0
    tags = stream.get("tags") or {}
    if "rotate" in tags:
        try:
            rot = int(float(tags["rotate"]))
        except ValueError:
            rot = 0
    for sd in stream.get("side_data_list") or []:
        if "rotation" in sd:
            try:
                rot = -int(float(sd["rotation"]))  # display matrix is counter-clockwise
            except (TypeError, ValueError):
                pass
    return rot % 360


def ffprobe(path: str, timeout: float = 60.0) -> dict:
    cmd = [FFPROBE, "-v", "error", "-print_format", "json", "-show_format", "-show_streams", local_path(path)]
    try:
        p = subprocess.run(cmd, capture_output=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        raise MediaError("timeout:probe", f"ffprobe took longer than {timeout:g} s") from None
    if p.returncode != 0:
        err = p.stderr.decode("utf-8", "replace").strip().splitlines()
        raise MediaError("unreadable", (err[-1] if err else f"ffprobe exit {p.returncode}")[:500])
    try:
        return json.loads(p.stdout.decode("utf-8", "replace"))
    except json.JSONDecodeError as e:
        raise MediaError("unreadable", f"ffprobe output not JSON: {e}") from None


def probe(path: str, audio_path: str | None = None, timeout: float = 60.0) -> ProbeInfo:
    info = ffprobe(path, timeout)
    streams = info.get("streams") or []
    fmt = info.get("format") or {}
    v = next((s for s in streams if s.get("codec_type") == "video"
              and not (s.get("disposition") or {}).get("attached_pic")), None)
    a = next((s for s in streams if s.get("codec_type") == "audio"), None)
    if audio_path:
        ainfo = ffprobe(audio_path, timeout)
        a = next((s for s in ainfo.get("streams") or [] if s.get("codec_type") == "audio"), None)
    dur = _frac(fmt.get("duration"))
    if v is not None and _frac(v.get("duration")) > 0:
        dur = _frac(v.get("duration"))
    fps = _frac(v.get("avg_frame_rate")) if v else 0.0
    if v is not None and not (0 < fps < 1000):
        fps = _frac(v.get("r_frame_rate"))
    rot = _rotation(v) if v else 0
    w, h = (int(v.get("width") or 0), int(v.get("height") or 0)) if v else (0, 0)
    sar = _frac((v or {}).get("sample_aspect_ratio", "1:1").replace(":", "/")) or 1.0
    if rot in (90, 270):
        w, h = h, w
    # Everything downstream sees square pixels at even sizes (the SQUARE_PIXELS filter below).
    w, h = int(w * sar) // 2 * 2, h // 2 * 2
    nf = None
    if v is not None and str(v.get("nb_frames", "")).isdigit():
        nf = int(v["nb_frames"])
    if v is not None and 0 < fps < MIN_PLAUSIBLE_FPS:
        raise MediaError("unreadable", f"implausible frame rate {fps:.3g} fps (broken timing in the container)")
    return ProbeInfo(
        duration_s=dur, fps=fps, width=w, height=h, rotation=rot,
        vcodec=v.get("codec_name") if v else None, acodec=a.get("codec_name") if a else None,
        audio_rate=int(a.get("sample_rate") or 0) if a else None,
        audio_channels=int(a.get("channels") or 0) if a else None,
        n_frames=nf, has_video=v is not None, has_audio=a is not None, sar=sar,
    )


def _run(cmd: list[str], timeout: float, what: str) -> bytes:
    try:
        p = subprocess.run(cmd, capture_output=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        raise MediaError(f"timeout:{what}", f"ffmpeg took longer than {timeout:g} s") from None
    if p.returncode != 0:
        err = p.stderr.decode("utf-8", "replace").strip().splitlines()
        raise MediaError("unreadable", f"ffmpeg failed: {(err[-1] if err else p.returncode)}"[:500])
    return p.stdout


def read_audio(path: str, start_s: float = 0.0, end_s: float | None = None, rate: int = 16000,
               timeout: float = 120.0) -> np.ndarray:
    """Mono float32 samples in [-1, 1] at `rate` for [start_s, end_s) of the file's first audio stream."""
    cmd = [FFMPEG, "-nostdin", "-v", "error", "-ss", f"{max(0.0, start_s):.6f}"]
    if end_s is not None:
        cmd += ["-t", f"{max(0.0, end_s - max(0.0, start_s)):.6f}"]
    cmd += ["-i", local_path(path), "-map", "0:a:0", "-ac", "1", "-ar", str(rate), "-f", "f32le", "-"]
    raw = _run(cmd, timeout, "decode")
    x = np.frombuffer(raw, dtype="<f4").copy()
    if start_s < 0:  # audio requested before the file starts: pad with silence
        x = np.concatenate([np.zeros(int(round(-start_s * rate)), np.float32), x])
    return x


# Every decode and the writer resample to square pixels, so boxes found by one stage are valid in the
# written clip's pixel space (anamorphic sources such as C1 included).
SQUARE_PIXELS = "scale=trunc(iw*sar/2)*2:trunc(ih/2)*2,setsar=1"


def jpeg_frame(path: str, t: float, height: int = 180, timeout: float = 30.0) -> bytes:
    """One frame at `t` seconds as a JPEG: square pixels, at most `height` px high (the report's thumbnails)."""
    cmd = [FFMPEG, "-nostdin", "-v", "error", "-ss", f"{max(0.0, t):.3f}", "-i", local_path(path), "-frames:v", "1",
           "-vf", f"{SQUARE_PIXELS},scale=-2:'min({height},ih)'", "-f", "image2", "-c:v", "mjpeg", "-q:v", "5",
           "pipe:1"]
    out = _run(cmd, timeout, "thumbnail")
    if not out.startswith(b"\xff\xd8"):
        raise MediaError("unreadable", "no frame decoded")
    return out


def scale_filter(width: int | None, height: int | None) -> str:
    """Scale keeping aspect ratio to fit inside width x height (even sizes)."""
    if width and height:
        return f"scale=w={width}:h={height}:force_original_aspect_ratio=decrease:force_divisible_by=2"
    if width:
        return f"scale=w={width}:h=-2"
    if height:
        return f"scale=w=-2:h={height}"
    return "null"


def output_size(src_w: int, src_h: int, width: int | None, height: int | None) -> tuple[int, int]:
    """The size `scale_filter` produces for a src_w x src_h input (mirrors ffmpeg's rounding)."""
    if width and height:
        r = min(width / src_w, height / src_h)
        w, h = src_w * r, src_h * r
        w, h = int(w) - int(w) % 2, int(h) - int(h) % 2
        return max(2, w), max(2, h)
    if width:
        return width, max(2, int(round(src_h * width / src_w / 2)) * 2)
    if height:
        return max(2, int(round(src_w * height / src_h / 2)) * 2), height
    return src_w, src_h


def clip_size(width: int, height: int, max_side: int | None) -> tuple[int, int]:
    """The size encode_clip writes a width x height (display, square-pixel, even) source at: its longer side
    at most `max_side` (None: no limit), aspect kept, even dimensions; sources already within are not resized."""
    if not max_side or max(width, height) <= max_side:
        return int(width), int(height)
    r = max_side / max(width, height)
    return max(2, int(round(width * r / 2)) * 2), max(2, int(round(height * r / 2)) * 2)


def iter_frames(path: str, start_s: float = 0.0, end_s: float | None = None, fps: float | None = None,
                size: tuple[int, int] | None = None, crop: tuple[int, int, int, int] | None = None,
                src_size: tuple[int, int] | None = None, pix_fmt: str = "rgb24",
                timeout: float = 600.0, threads: int = 1, fast: bool = False) -> Iterator[np.ndarray]:
    """Stream frames as HxWxC uint8 arrays (C = 3 for rgb24/bgr24, 1 for gray), never holding the clip.

    `fps` resamples (None keeps the source rate), `crop` (x, y, w, h) applies in the source's display
    pixels before scaling to `size` = (max_w, max_h) (aspect kept). `src_size` is the display size
    (from probe) needed to know the output size when scaling without a crop.

    `fast` trades exactness for speed where only a coarse picture is needed (shot detection): the decoder
    skips its in-loop deblocking filter (H.264/HEVC/VP9: about a quarter of their decode) and the scaler is
    bilinear. The frames are then approximations of the source's, never to be measured or written."""
    # Frame-rate resampling first: frames it drops are never scaled.
    filters = [f"fps={fps:g}"] if fps else []
    w0, h0 = src_size if src_size else (None, None)
    flags = ":flags=fast_bilinear" if fast else ""
    if crop is not None:
        x, y, cw, ch = (int(v) for v in crop)
        filters += [SQUARE_PIXELS, f"crop={cw}:{ch}:{x}:{y}"]
        w0, h0 = cw, ch
    if size is not None:
        if w0 is None:
            raise ValueError("iter_frames needs src_size or crop to scale")
        ow, oh = output_size(w0, h0, *size)
        # Without a crop one scale goes from the coded size straight to the display-proportioned output
        # (squaring anamorphic pixels on the way) rather than through a full-size square-pixel frame.
        filters += [f"scale={ow}:{oh}{flags}", "setsar=1"]
    else:
        if w0 is None:
            raise ValueError("iter_frames needs src_size or crop")
        if crop is None:
            filters.append(SQUARE_PIXELS)
        ow, oh = w0, h0
    chans = 1 if pix_fmt == "gray" else 3
    cmd = [FFMPEG, "-nostdin", "-v", "error", "-threads", str(threads)]
    if fast:
        cmd += ["-skip_loop_filter", "all"]
    if start_s > 0:
        cmd += ["-ss", f"{start_s:.6f}"]
    if end_s is not None:
        cmd += ["-t", f"{max(0.0, end_s - start_s):.6f}"]
    cmd += ["-i", local_path(path), "-map", "0:v:0", "-an", "-sn"]
    if filters:
        cmd += ["-vf", ",".join(filters)]
    cmd += ["-pix_fmt", pix_fmt, "-f", "rawvideo", "-"]
    frame_bytes = ow * oh * chans
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, bufsize=frame_bytes * 4)
    # `timeout` is a deadline for the whole decode: a file that hangs ffmpeg (or a FIFO that never delivers)
    # gets ffmpeg killed, which ends the read below. stderr is drained on a thread (a corrupt file can log
    # more than a pipe holds, which would otherwise block ffmpeg); its last lines explain a failure.
    expired = threading.Event()

    def _expire():
        expired.set()
        with contextlib.suppress(OSError):
            proc.kill()

    err_tail: collections.deque[bytes] = collections.deque(maxlen=16)

    def _drain():
        for line in proc.stderr:
            err_tail.append(line)

    timer = threading.Timer(timeout, _expire)
    timer.daemon = True
    timer.start()
    drain = threading.Thread(target=_drain, daemon=True)
    drain.start()
    try:
        while True:
            buf = proc.stdout.read(frame_bytes)
            if not buf or len(buf) < frame_bytes:
                break
            arr = np.frombuffer(buf, np.uint8).reshape(oh, ow, chans)
            yield arr if chans > 1 else arr[:, :, 0]
        proc.wait()
        drain.join(5.0)
        if expired.is_set():
            raise MediaError("timeout:decode", f"ffmpeg decode took longer than {timeout:g} s")
        if proc.returncode not in (0, None):
            err = b"".join(err_tail).decode("utf-8", "replace").strip().splitlines()
            raise MediaError("unreadable", f"decode failed: {(err[-1] if err else proc.returncode)}"[:500])
    finally:
        timer.cancel()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
        drain.join(5.0)
        proc.stderr.close()


def read_frames(*args, **kwargs) -> np.ndarray:
    """All frames of `iter_frames` as one array: only for short spans and small sizes."""
    frames = list(iter_frames(*args, **kwargs))
    if not frames:
        return np.zeros((0, 0, 0, 3), np.uint8)
    return np.stack(frames)


def encode_clip(path: str, start_s: float, end_s: float, *, fps: float = 25.0, audio_rate: int = 16000,
                audio_path: str | None = None, audio_shift_s: float = 0.0, crf: int = 20,
                preset: str = "veryfast", size: tuple[int, int] | None = None,
                timeout: float = 600.0) -> tuple[bytes, bytes, int]:
    """Cut [start_s, end_s) and normalise: H.264 yuv420p at `fps` with AAC mono `audio_rate` in an mp4,
    plus the same audio as 16-bit PCM wav. Rotation is applied (ffmpeg autorotates on decode).
    `size` (w, h): the video is scaled to it in one step from the coded frame (`clip_size` of the probed
    display size: aspect kept, even sizes); None keeps the source's square-pixel display size.
    `audio_shift_s` > 0 takes the audio that many seconds later (audio lagged the video).
    Returns (mp4 bytes, wav bytes, frame count)."""
    n_frames = max(1, int(round((end_s - start_s) * fps)))
    dur = n_frames / fps
    src = local_path(path)
    asrc = local_path(audio_path) if audio_path else src
    a_start = start_s + audio_shift_s
    with temp_dir() as td:
        mp4 = os.path.join(td, "clip.mp4")
        wav = os.path.join(td, "clip.wav")
        a_in = ["-ss", f"{max(0.0, a_start):.6f}", "-t", f"{dur:.6f}", "-i", asrc]
        # first_pts=0: the audio starts exactly at the cut (trimmed when the stream starts early, as Opus
        # pre-skip does; silence-filled when it starts late), so apad fills it to exactly `dur`
        afilt = f"aresample={audio_rate}:async=1:first_pts=0,apad=whole_dur={dur:.6f}"
        pixels = SQUARE_PIXELS if size is None else f"scale={int(size[0])}:{int(size[1])},setsar=1"
        if a_start < 0:
            afilt = f"adelay={int(round(-a_start * 1000))}:all=1," + afilt
        cmd = [FFMPEG, "-nostdin", "-v", "error", "-y",
               "-ss", f"{start_s:.6f}", "-t", f"{dur + 1.0 / fps:.6f}", "-i", src, *a_in,
               "-map", "0:v:0", "-map", "1:a:0",
               # exactly n_frames by a trim in the filter graph: -frames:v would end the whole file when the
               # video is done, cutting the AAC track (still in the encoder) short by about half a second
               "-vf", f"fps={fps:g},{pixels},trim=end_frame={n_frames}",
               "-c:v", "libx264", "-preset", preset, "-crf", str(crf), "-pix_fmt", "yuv420p",
               "-af", afilt, "-ac", "1", "-ar", str(audio_rate), "-c:a", "aac", "-b:a", "64k",
               "-t", f"{dur:.6f}", "-movflags", "+faststart", mp4,
               "-map", "1:a:0", "-af", afilt, "-ac", "1", "-ar", str(audio_rate), "-c:a", "pcm_s16le",
               "-t", f"{dur:.6f}", wav]
        _run(cmd, timeout, "write")
        with open(mp4, "rb") as f:
            mp4_bytes = f.read()
        with open(wav, "rb") as f:
            wav_bytes = f.read()
    return mp4_bytes, wav_bytes, n_frames


def encode_frames(frames: np.ndarray, out_path: str, *, fps: float = 25.0, audio_path: str | None = None,
                  crf: int = 18, timeout: float = 600.0) -> None:
    """Write (N, H, W, 3) uint8 RGB frames as H.264 yuv420p at `fps`, with the first audio stream of
    `audio_path` muxed in as AAC and cut to the video's length when given."""
    n, h, w, _ = frames.shape
    cmd = [FFMPEG, "-nostdin", "-v", "error", "-y",
           "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{w}x{h}", "-r", f"{fps:g}", "-i", "-"]
    if audio_path:
        cmd += ["-i", local_path(audio_path), "-map", "0:v:0", "-map", "1:a:0", "-c:a", "aac", "-b:a", "128k"]
    cmd += ["-c:v", "libx264", "-pix_fmt", "yuv420p", "-crf", str(crf), "-t", f"{n / fps:.6f}",
            "-movflags", "+faststart", out_path]
    try:
        p = subprocess.run(cmd, input=np.ascontiguousarray(frames, np.uint8).tobytes(), capture_output=True,
                           timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        raise MediaError("timeout:write", f"ffmpeg took longer than {timeout:g} s") from None
    if p.returncode != 0:
        err = p.stderr.decode("utf-8", "replace").strip().splitlines()
        raise MediaError("unreadable", f"ffmpeg could not write {out_path}: {(err[-1] if err else p.returncode)}"[:500])
