"""A corpus of bad and odd inputs, made here with ffmpeg and plain bytes (importable by tests and scripts).

`make_corpus(d)` writes every kind into directory `d` and returns one `Case` per input file: its name (as
`list_inputs` will find it), the kind, and what the pipeline must make of it with the corpus manifest
(`corpus_manifest`): a probe/scenes/write run where sources need 1 s and shots 1.5 s. The expectation is either
"kept" (every candidate clip of it kept and written correctly) or the audit reason its source is rejected with.
Files are small (64x48 or so, 1-4 s) so that the whole corpus runs in well under a minute of CPU.

Kinds whose expectation depends on this machine (an encoder ffmpeg lacks, running as root where permissions do
not stop a read) say so in their `note`; an encoder that is missing drops the kind, never fails the build.
"""

from __future__ import annotations

import os
import random
import shutil
import struct
import subprocess
from dataclasses import dataclass
from pathlib import Path

W, H = 64, 48  # not square, so that a 90/270 rotation shows in the written size
SECONDS = 3

CORPUS_MANIFEST = """\
name: bad-input-corpus
description: probe, scenes and write only (later stages see only clips that decoded), short limits.
video: {preset: ultrafast}
output: {commit_every_sources: 8}
stages:
  - name: probe
    params: {min_duration_s: 1.0, require_audio: true, min_side_px: 16}
    resources: {num_cpus: 0.25, batch_size: 4, timeout_s: %(probe_timeout)s}
  - name: scenes
    params: {min_s: 1.5, max_s: 50.0}
    resources: {num_cpus: 0.5, batch_size: 1, timeout_s: 120}
  - name: write
    params: {}
    resources: {num_cpus: 0.5, batch_size: 1, timeout_s: 120}
"""


def corpus_manifest(path: Path, probe_timeout: float = 5.0) -> Path:
    path.write_text(CORPUS_MANIFEST % {"probe_timeout": probe_timeout})
    return path


@dataclass
class Case:
    name: str  # file (or directory, link, FIFO) name inside the corpus directory
    kind: str
    expect: str  # "kept", or the reason the source is rejected with
    note: str = ""
    rotation: int = 0  # kept clips: the written mp4 is rotated upright (90/270 swap width and height)
    size: tuple[int, int] | None = None  # kept clips: the written (width, height), when not the default


class Encoders:
    def __init__(self):
        out = subprocess.run(["ffmpeg", "-hide_banner", "-encoders"], capture_output=True, text=True).stdout
        self.names = {line.split()[1] for line in out.splitlines()[1:] if len(line.split()) > 1}

    def has(self, name: str) -> bool:
        return name in self.names


def ffmpeg(*args: str | os.PathLike) -> None:
    p = subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-y", *map(str, args)], capture_output=True)
    if p.returncode != 0:
        raise RuntimeError(f"ffmpeg {' '.join(map(str, args))}: {p.stderr.decode(errors='replace')[-800:]}")


def _video(seconds: float = SECONDS, size: str = f"{W}x{H}", rate: float = 25) -> list[str]:
    return ["-f", "lavfi", "-i", f"testsrc2=size={size}:rate={rate}:duration={seconds}"]


def _audio(seconds: float = SECONDS, rate: int = 44100, layout: str = "mono") -> list[str]:
    return ["-f", "lavfi", "-i", f"sine=frequency=440:sample_rate={rate}:duration={seconds},"
                                 f"aformat=channel_layouts={layout}"]


H264 = ["-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p"]
AAC = ["-c:a", "aac", "-b:a", "32k"]


def _av(out: Path, *codec: str, seconds: float = SECONDS, vf: list[str] | None = None, arate: int = 44100,
        layout: str = "mono", vsize: str = f"{W}x{H}", vrate: float = 25, extra: list[str] | None = None) -> Path:
    ffmpeg(*_video(seconds, vsize, vrate), *_audio(seconds, arate, layout), *(vf or []), *codec, *(extra or []),
           "-shortest", out)
    return out


def _patch_durations(data: bytes, factor: float) -> bytes:
    """Multiply the declared duration in every mvhd, tkhd, mdhd and edit list (elst) box of an mp4 (version 0
    boxes); the samples themselves (and so the real length) stay as they were."""
    buf = bytearray(data)
    # offsets from the box type: version/flags +4, times +8 and +12, then mvhd/mdhd: timescale +16, duration
    # +20; tkhd: track id +16, reserved +20, duration +24; elst: entry count +8, first segment duration +12
    for box, off in ((b"mvhd", 20), (b"tkhd", 24), (b"mdhd", 20), (b"elst", 12)):
        i = buf.find(box)
        while i >= 0:
            if buf[i + 4] == 0:  # version 0: 32-bit duration at `off` bytes after the type
                pos = i + off
                (dur,) = struct.unpack(">I", buf[pos:pos + 4])
                buf[pos:pos + 4] = struct.pack(">I", min(0xFFFFFFFF, int(dur * factor)))
            i = buf.find(box, i + 4)
    return bytes(buf)


def _break_timescales(data: bytes) -> bytes:
    """Set the timescale of every mvhd and mdhd box to 2^32-1 (ffmpeg then reads a frame rate near zero)."""
    buf = bytearray(data)
    for box in (b"mvhd", b"mdhd"):
        i = buf.find(box)
        while i >= 0:
            if buf[i + 4] == 0:
                buf[i + 16:i + 20] = b"\xff\xff\xff\xff"
            i = buf.find(box, i + 4)
    return bytes(buf)


def make_corpus(d: Path) -> list[Case]:
    """Write every kind into `d` (created); return the cases."""
    d.mkdir(parents=True, exist_ok=True)
    enc = Encoders()
    rng = random.Random(8)
    cases: list[Case] = []

    def case(name: str, kind: str, expect: str, note: str = "", **kw) -> None:
        cases.append(Case(name, kind, expect, note, **kw))

    # -- plain bytes ---------------------------------------------------------------------------------
    (d / "empty.mp4").write_bytes(b"")
    case("empty.mp4", "empty", "unreadable")
    (d / "random_bytes.mp4").write_bytes(rng.randbytes(64_000))
    case("random_bytes.mp4", "random bytes", "unreadable")
    (d / "zeros.mov").write_bytes(bytes(32_000))
    case("zeros.mov", "zero bytes", "unreadable")
    (d / "text_named.mp4").write_text("this is not a video, only text named .mp4\n" * 50)
    case("text_named.mp4", "text named .mp4", "unreadable")
    (d / "html_named.webm").write_text("<!doctype html><html><body>404 not found</body></html>\n")
    case("html_named.webm", "an HTML error page named .webm", "unreadable")

    # -- a good file and its damaged copies ------------------------------------------------------------
    good = _av(d / "good.mp4", *H264, *AAC)
    case("good.mp4", "valid H.264/AAC (reference)", "kept")
    faststart = _av(d / "_faststart.mp4", *H264, *AAC, extra=["-movflags", "+faststart"])
    data, fdata = good.read_bytes(), faststart.read_bytes()
    faststart.unlink()
    (d / "trunc_header.mp4").write_bytes(data[:200])
    case("trunc_header.mp4", "truncated in the header (200 bytes)", "unreadable")
    (d / "trunc_half.mp4").write_bytes(data[: len(data) // 2])
    case("trunc_half.mp4", "truncated at 50% (index at the end, lost)", "unreadable")
    (d / "trunc_tail.mp4").write_bytes(data[:-64])
    case("trunc_tail.mp4", "last 64 bytes cut (the index's tail: the media still reads)", "kept")
    (d / "trunc_faststart_70.mp4").write_bytes(fdata[: int(len(fdata) * 0.7)])
    case("trunc_faststart_70.mp4", "index first, media truncated at 70% (decodes a shorter clip)", "kept")
    (d / "garbage_appended.mp4").write_bytes(data + rng.randbytes(20_000))
    case("garbage_appended.mp4", "valid file with 20 kB of garbage appended", "kept")
    flipped = bytearray(fdata)
    mid = len(flipped) // 2
    flipped[mid:mid + 512] = rng.randbytes(512)
    (d / "corrupt_middle.mp4").write_bytes(bytes(flipped))
    case("corrupt_middle.mp4", "512 random bytes in the middle of the media data", "kept")
    (d / "huge_duration.mp4").write_bytes(_patch_durations(data, 10_000_000))
    case("huge_duration.mp4", "declared duration of days (3 s of frames): the 3 s are kept", "kept")
    (d / "inflated_duration.mp4").write_bytes(_patch_durations(data, 1000))
    case("inflated_duration.mp4", "declared duration of 50 min (3 s of frames): the 3 s are kept", "kept")
    (d / "broken_timescale.mp4").write_bytes(_break_timescales(data))
    case("broken_timescale.mp4", "invalid timescales (a frame rate of 0.002 fps, 50 min declared)", "unreadable")
    (d / "zero_declared_duration.mp4").write_bytes(_patch_durations(data, 0))
    case("zero_declared_duration.mp4", "declared duration 0 (3 s of frames)", "unreadable")

    # -- streams missing or degenerate ------------------------------------------------------------------
    ffmpeg(*_audio(), *AAC, d / "audio_only.mp4")
    case("audio_only.mp4", "audio only", "no_video")
    ffmpeg(*_audio(), "-c:a", "libmp3lame", d / "mp3_named.mp4")
    case("mp3_named.mp4", "an mp3 file named .mp4", "no_video")
    ffmpeg(*_video(), *H264, d / "video_only.mp4")
    case("video_only.mp4", "video only", "no_audio")
    ffmpeg(*_video(), *_audio(), *H264, *AAC, "-t", "0", d / "zero_duration.mp4")
    case("zero_duration.mp4", "zero duration (-t 0: no stream at all)", "no_video")
    ffmpeg(*_video(), *H264, "-frames:v", "1", d / "_one.mp4")
    ffmpeg("-i", d / "_one.mp4", *_audio(), "-map", "0:v", "-map", "1:a", "-c:v", "copy", *AAC, d / "one_frame.mp4")
    (d / "_one.mp4").unlink()
    case("one_frame.mp4", "a single frame", "too_short")
    ffmpeg("-f", "lavfi", "-i", f"color=c=gray:s=2x2:r=25:d={SECONDS}", *_audio(), "-vf", "scale=1:1", "-c:v", "libx264",
           "-pix_fmt", "yuv444p", *AAC, "-shortest", d / "tiny_1x1.mp4")
    case("tiny_1x1.mp4", "1x1 pixel", "too_small")
    ffmpeg("-f", "lavfi", "-i", "color=c=red:size=64x64", "-frames:v", "1", d / "_cover.png")
    ffmpeg(*_audio(), "-i", d / "_cover.png", "-map", "0:a", "-map", "1:v", *AAC, "-c:v", "png",
           "-disposition:v:0", "attached_pic", d / "cover_art_only.mp4")
    (d / "_cover.png").unlink()
    case("cover_art_only.mp4", "audio with cover art, no real video", "no_video")
    ffmpeg("-f", "lavfi", "-i", "color=c=blue:size=64x48", "-frames:v", "1", "-c:v", "png", "-f", "image2",
           d / "png_named.mp4")
    case("png_named.mp4", "a PNG image named .mp4", "no_audio")

    # -- size, rate, geometry ---------------------------------------------------------------------------
    ffmpeg(*_video(1.2, "7680x4320", 5), *_audio(1.2), *H264, *AAC, "-shortest", d / "huge_8k.mp4")
    case("huge_8k.mp4", "8K (7680x4320), 1.2 s: decoded, then a too-short shot", "too_short")
    _av(d / "odd_size_65x47.mp4", "-c:v", "libx264", "-pix_fmt", "yuv444p", *AAC, vsize="65x47")
    case("odd_size_65x47.mp4", "odd width and height", "kept", size=(64, 46))
    _av(d / "anamorphic.mp4", *H264, *AAC, vf=["-vf", "setsar=2"])
    case("anamorphic.mp4", "non-square pixels (SAR 2:1)", "kept", size=(128, 48))
    ffmpeg(*_video(rate=30), *_audio(), "-vf", "select='lt(mod(n\\,10)\\,6)'", "-fps_mode", "vfr", *H264, *AAC,
           "-shortest", d / "vfr.mp4")
    case("vfr.mp4", "variable frame rate (4 of every 10 frames dropped)", "kept")
    _av(d / "fps_120.mp4", *H264, *AAC, vrate=120)
    case("fps_120.mp4", "120 fps", "kept")
    _av(d / "fps_3.mp4", *H264, *AAC, vrate=3)
    case("fps_3.mp4", "3 fps", "kept")
    _av(d / "10bit.mp4", "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p10le", *AAC)
    case("10bit.mp4", "10-bit H.264", "kept")
    for rot in (90, 180, 270):
        ffmpeg("-i", good, "-c", "copy", "-metadata:s:v:0", f"rotate={rot}", d / f"rotated_{rot}.mp4")
        case(f"rotated_{rot}.mp4", f"rotated {rot} degrees (display matrix)", "kept", rotation=rot,
             size=(H, W) if rot in (90, 270) else None)

    # -- codecs and containers --------------------------------------------------------------------------
    if enc.has("libx265"):
        _av(d / "hevc.mp4", "-c:v", "libx265", "-preset", "ultrafast", "-tag:v", "hvc1", "-x265-params",
            "log-level=error", *AAC)
        case("hevc.mp4", "HEVC", "kept")
    if enc.has("libvpx-vp9"):
        _av(d / "vp9.webm", "-c:v", "libvpx-vp9", "-deadline", "realtime", "-cpu-used", "8", "-c:a", "libopus")
        case("vp9.webm", "VP9 + Opus in WebM", "kept")
    av1 = next((e for e in ("libsvtav1", "libaom-av1", "librav1e") if enc.has(e)), None)
    if av1:
        speed = {"libsvtav1": ["-preset", "12"], "libaom-av1": ["-cpu-used", "8"], "librav1e": ["-speed", "10"]}[av1]
        _av(d / "av1.mkv", "-c:v", av1, *speed, "-pix_fmt", "yuv420p", "-c:a", "libopus", vsize="64x64")
        case("av1.mkv", f"AV1 ({av1}) + Opus in Matroska", "kept", size=(64, 64))
    _av(d / "mjpeg.avi", "-c:v", "mjpeg", "-q:v", "5", "-pix_fmt", "yuvj420p", "-c:a", "pcm_s16le")
    case("mjpeg.avi", "MJPEG + PCM in AVI", "kept")
    _av(d / "prores.mov", "-c:v", "prores_ks", "-profile:v", "0", "-c:a", "pcm_s16le")
    case("prores.mov", "ProRes + PCM in QuickTime", "kept")
    _av(d / "mpeg4.mkv", "-c:v", "mpeg4", "-c:a", "flac")
    case("mpeg4.mkv", "MPEG-4 part 2 + FLAC in Matroska", "kept")
    _av(d / "UPPER_CASE.MP4", *H264, *AAC)
    case("UPPER_CASE.MP4", "upper-case extension", "kept")

    # -- audio ------------------------------------------------------------------------------------------
    _av(d / "audio_8k.mp4", *H264, *AAC, arate=8000)
    case("audio_8k.mp4", "8 kHz mono audio", "kept")
    _av(d / "audio_48k_6ch.mp4", *H264, "-c:a", "aac", "-b:a", "96k", arate=48000, layout="5.1")
    case("audio_48k_6ch.mp4", "48 kHz 6-channel (5.1) audio", "kept")
    ffmpeg(*_video(2), *_audio(4), *H264, *AAC, d / "audio_longer.mp4")
    case("audio_longer.mp4", "audio 2 s longer than the video", "kept")
    ffmpeg(*_video(), "-itsoffset", "0.5", *_audio(), *H264, *AAC, "-map", "0:v", "-map", "1:a", "-t", str(SECONDS),
           d / "audio_starts_late.mp4")
    case("audio_starts_late.mp4", "audio starting 0.5 s after the video", "kept")
    ffmpeg(*_video(), *_audio(), *H264, *AAC, "-map", "0:v", "-map", "1:a", "-map", "1:a", d / "two_audio.mp4")
    case("two_audio.mp4", "two audio streams", "kept")

    # -- names ------------------------------------------------------------------------------------------
    for name, kind in (("name with  spaces.mp4", "spaces in the name"),
                       ("it's a \"quoted\" name.mp4", "single and double quotes in the name"),
                       ("new\nline.mp4", "a newline in the name"),
                       ("ünïcödé 日本語 🎥.mp4", "non-ASCII name"),
                       ("-leading-dash.mp4", "name starting with a dash"),
                       ("colon:in:name.mp4", "colons in the name (ffmpeg protocol syntax)"),
                       ("semi;colon $(touch pwned) `x`.mp4", "shell metacharacters in the name"),
                       ("x" * 200 + ".mp4", "a 204-byte name")):
        shutil.copy(good, d / name)
        case(name, kind, "kept")
    # A Latin-1 name (old archives): not valid UTF-8. Python lists it with a surrogate (os.fsdecode); it must
    # not stop the run, and the audit keeps its bytes (source_bytes).
    latin1 = os.fsdecode(b"latin1_caf\xe9_\xff.mp4")
    shutil.copy(good, os.path.join(os.fsencode(d), os.fsencode(latin1)))
    case(latin1, "a file name that is not valid UTF-8 (Latin-1 bytes)", "kept")

    # -- file system oddities ---------------------------------------------------------------------------
    os.symlink("good.mp4", d / "symlink_to_good.mp4")
    case("symlink_to_good.mp4", "symlink to a valid file", "kept")
    os.symlink("does_not_exist.mp4", d / "dangling_symlink.mp4")
    case("dangling_symlink.mp4", "dangling symlink", "unreadable")
    os.symlink("symlink_loop.mp4", d / "symlink_loop.mp4")
    case("symlink_loop.mp4", "symlink pointing at itself", "unreadable")
    shutil.copy(good, d / "no_permission.mp4")
    os.chmod(d / "no_permission.mp4", 0)
    root = os.geteuid() == 0
    case("no_permission.mp4", "mode 000", "kept" if root else "unreadable",
         "root reads it anyway" if root else "")
    (d / "directory.mp4").mkdir()
    (d / "directory.mp4" / "inner.txt").write_text("a directory named like a video\n")
    case("directory.mp4", "a directory named .mp4", "unreadable")
    os.mkfifo(d / "fifo.mp4")
    case("fifo.mp4", "a FIFO named .mp4 (opening it blocks forever)", "timeout:probe")
    return cases


def tree_snapshot(root: Path) -> dict[str, tuple]:
    """Every entry under `root` (not following links) with its type, size and mtime: to show nothing changed."""
    snap = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for n in dirnames + filenames:
            p = Path(dirpath) / n
            st = p.lstat()
            snap[str(p.relative_to(root))] = (st.st_mode, st.st_size, st.st_mtime_ns)
    return snap


if __name__ == "__main__":
    import sys

    target = Path(sys.argv[1] if len(sys.argv) > 1 else "bad-inputs")
    for c in make_corpus(target):
        print(f"{c.expect:14s} {c.kind:60s} {c.name!r}")
