"""Probe: read each source's container with ffprobe; reject what cannot become a clip."""

from __future__ import annotations

from pydantic import Field

from curation.media.ffmpeg import MediaError, probe
from curation.engine.record import ClipRecord
from stages.base import Check, Params, Stage


class ProbeParams(Params):
    min_duration_s: float = Field(5.0, ge=0, description="sources shorter than this are too_short")
    require_audio: bool = True
    min_side_px: int = Field(16, ge=2, description="smaller frames cannot be decoded usefully")
    max_duration_s: float = Field(24 * 3600.0, gt=0, description="declared durations above this are unreadable")

    checks = (
        Check("source_short_side_px", "min_side_px", "min", "too_small",
              "the frame's shorter side is too small to decode usefully", hard=True),
        Check("source_duration_s", "min_duration_s", "min", "too_short", "the source is shorter than a clip may be"),
    )


class ProbeStage(Stage):
    """ffprobe → duration, fps, size, rotation, codecs, audio stream.
    Reasons: unreadable, no_video, no_audio, too_short, too_small."""

    name = "probe"
    Params = ProbeParams
    params: ProbeParams
    hard_reasons = {
        "no_video": "the container has no video stream",
        "no_audio": "no audio stream (in the source, or in its external audio file) and require_audio is set",
        "timeout:probe": "ffprobe ran past the stage's time limit",
    }

    def process_one(self, rec: ClipRecord) -> ClipRecord:
        p = self.params
        try:
            info = probe(rec.source, rec.audio_path, timeout=self.ctx.timeout_s)
        except MediaError as e:
            self.reject(rec, e.reason, str(e))
            return rec
        rec.probe = info.as_dict()
        if not info.has_video:
            self.reject(rec, "no_video", f"no video stream (codecs: audio={info.acodec})")
        elif p.require_audio and not info.has_audio:
            self.reject(rec, "no_audio", "no audio stream" + (f" in {rec.audio_path}" if rec.audio_path else ""))
        elif info.duration_s <= 0 or info.duration_s > p.max_duration_s or info.fps <= 0:
            self.reject(rec, "unreadable", f"implausible duration {info.duration_s:g} s or fps {info.fps:g}")
        else:  # both recorded for every probed source (its clips carry them: `curation select` re-decides on them)
            self.check(rec, "source_short_side_px", min(info.width, info.height))
            self.check(rec, "source_duration_s", info.duration_s)
        return rec
