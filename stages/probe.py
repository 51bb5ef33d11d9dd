"""Probe: read each source's container with ffprobe; reject what cannot become a clip."""

from __future__ import annotations

from pydantic import Field

from curation.media.ffmpeg import MediaError, probe
from curation.engine.record import ClipRecord
from stages.base import Params, Stage


class ProbeParams(Params):
    min_duration_s: float = Field(5.0, ge=0, description="sources shorter than this are too_short")
    require_audio: bool = True
    min_side_px: int = Field(16, ge=2, description="smaller frames cannot be decoded usefully")
    max_duration_s: float = Field(24 * 3600.0, gt=0, description="declared durations above this are unreadable")


class ProbeStage(Stage):
    """ffprobe → duration, fps, size, rotation, codecs, audio stream.
    Reasons: unreadable, no_video, no_audio, too_short, too_small."""

    name = "probe"
    Params = ProbeParams

    def process_one(self, rec: ClipRecord) -> ClipRecord:
        p: ProbeParams = self.params
        try:
            info = probe(rec.source, rec.audio_path, timeout=self.ctx.timeout_s)
        except MediaError as e:
            rec.reject(self.name, e.reason, str(e))
            return rec
        rec.probe = info.as_dict()
        if not info.has_video:
            rec.reject(self.name, "no_video", f"no video stream (codecs: audio={info.acodec})")
        elif p.require_audio and not info.has_audio:
            rec.reject(self.name, "no_audio", "no audio stream" + (f" in {rec.audio_path}" if rec.audio_path else ""))
        elif info.duration_s <= 0 or info.duration_s > p.max_duration_s or info.fps <= 0:
            rec.reject(self.name, "unreadable", f"implausible duration {info.duration_s:g} s or fps {info.fps:g}")
        elif min(info.width, info.height) < p.min_side_px:
            rec.reject(self.name, "too_small", f"{info.width}x{info.height} below {p.min_side_px} px")
        elif info.duration_s < p.min_duration_s:
            self.check(rec, "source_duration_s", info.duration_s, reason="too_short", min=p.min_duration_s)
        return rec
