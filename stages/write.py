"""Write: cut each kept clip with ffmpeg and normalise it (25 fps H.264, 16 kHz mono AAC in the mp4, plus
16 kHz mono PCM wav), applying the sync stage's audio shift. The driver packs the bytes into shards."""

from __future__ import annotations

from curation.media.ffmpeg import encode_clip
from curation.engine.record import ClipRecord
from stages.base import Params, Stage


class WriteParams(Params):
    pass


class WriteStage(Stage):
    name = "write"
    Params = WriteParams
    params: WriteParams

    def should_process(self, rec: ClipRecord) -> bool:
        # A score-only run writes no shards: it scores every clip and keeps the audit.
        return super().should_process(rec) and not self.ctx.score_only

    def process_one(self, rec: ClipRecord) -> ClipRecord:
        v = self.ctx.video
        shift_frames = float(rec.data.get("audio_shift_frames", 0.0))
        mp4, wav, n = encode_clip(
            rec.source, rec.start_s, rec.end_s, fps=self.ctx.fps, audio_rate=self.ctx.audio_rate,
            audio_path=rec.audio_path, audio_shift_s=shift_frames / self.ctx.fps,
            crf=int(v.get("crf", 20)), preset=str(v.get("preset", "veryfast")), timeout=self.ctx.timeout_s)
        rec.blobs["mp4"] = mp4
        rec.blobs["wav"] = wav
        rec.data["n_frames"] = n
        return rec
