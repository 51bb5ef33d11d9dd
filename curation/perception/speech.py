"""Speech presence with Silero VAD (v5/v6 ONNX) through onnxruntime.

The `silero-vad` package would pull torchaudio and a second torch; its ONNX model only needs the loop it
wraps around it, reproduced here: 16 kHz audio in chunks of 512 new samples, each fed with the last 64
samples of the previous chunk as context and the recurrent state carried from chunk to chunk."""

from __future__ import annotations

import numpy as np

SAMPLE_RATE = 16000
CHUNK = 512  # new samples per step at 16 kHz (32 ms)
CONTEXT = 64  # samples of the previous chunk prepended to each step


class SileroVAD:
    def __init__(self, model_path: str, threads: int = 1, use_gpu: bool = False):
        from curation.perception.ortsession import session  # heavy import: only when a stage builds one

        self.session = session(model_path, max(1, int(threads)), use_gpu)

    def probabilities(self, audio: np.ndarray, rate: int = SAMPLE_RATE) -> np.ndarray:
        """Speech probability per 32 ms chunk of `audio` (mono float32 in [-1, 1] at 16 kHz); the last
        partial chunk is zero-padded."""
        if rate != SAMPLE_RATE:
            raise ValueError(f"Silero VAD runs on {SAMPLE_RATE} Hz audio here, got {rate}")
        x = np.asarray(audio, dtype=np.float32).reshape(-1)
        n = int(np.ceil(len(x) / CHUNK))
        if n == 0:
            return np.zeros(0, np.float32)
        x = np.concatenate([x, np.zeros(n * CHUNK - len(x), np.float32)])
        state = np.zeros((2, 1, 128), np.float32)
        context = np.zeros((1, CONTEXT), np.float32)
        sr = np.array(SAMPLE_RATE, dtype=np.int64)
        out = np.empty(n, np.float32)
        for i in range(n):
            inp = np.concatenate([context, x[None, i * CHUNK:(i + 1) * CHUNK]], axis=1)
            prob, state = self.session.run(None, {"input": inp, "state": state, "sr": sr})
            out[i] = float(prob.reshape(-1)[0])
            context = inp[:, -CONTEXT:]
        return out

    def speech_ratio(self, audio: np.ndarray, threshold: float = 0.5, rate: int = SAMPLE_RATE) -> float:
        """Fraction of the 32 ms chunks whose speech probability reaches `threshold`."""
        p = self.probabilities(audio, rate)
        return float(np.mean(p >= threshold)) if len(p) else 0.0
