"""The bundled model on real footage: data pipeline, overfitting, exact resume and sampling (tiny, CPU)."""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import webdataset as wds

from curation.dit import cli
from curation.dit.configs import CONFIGS
from curation.dit.data import make_loader, mel_window, read_frames, read_wav
from curation.dit.flow import flow_loss
from curation.dit.train import build_state, model_inputs, save_checkpoint, train, train_step

ROOT = Path(__file__).resolve().parent.parent
FOOTAGE = Path(os.environ.get("CURATION_FOOTAGE", ROOT.parent / "shared" / "footage"))
A1 = "A1_hdtf_bob_menendez_talking_8s.mp4"  # 512x512 25 fps
E1 = "E1_liveportrait_d6_single_face_34s.mp4"  # 480x480 30 fps, resampled to 25
CLIPS = [(A1, 0.0), (A1, 2.5), (A1, 5.0), (E1, 3.0), (E1, 12.0), (E1, 21.0)]
CLIP_S = 2.0
TINY = replace(CONFIGS["tiny"], num_workers=2, shuffle_buffer=4)


def ffmpeg(*args: str) -> None:
    p = subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-y", *args], capture_output=True)
    if p.returncode:
        raise RuntimeError(p.stderr.decode(errors="replace"))


def make_shards(root: Path) -> Path:
    """Six 2 s clips cut from the shared footage, written as the pipeline's shard contract (25 fps H.264
    mp4 with AAC 16 kHz mono, aligned 16 kHz mono PCM16 wav, json) into root/shards, three per shard.
    Returns root/shards."""
    shards = root / "shards"
    shards.mkdir(parents=True)
    n_frames = round(CLIP_S * 25)
    with wds.ShardWriter(str(shards / "shard-%06d.tar"), maxcount=3, verbose=0) as sink:
        for i, (name, start) in enumerate(CLIPS):
            mp4, wav = root / f"{i}.mp4", root / f"{i}.wav"
            ffmpeg("-ss", f"{start}", "-t", f"{CLIP_S}", "-i", str(FOOTAGE / name),
                   "-map", "0:v:0", "-vf", "fps=25", "-frames:v", str(n_frames), "-c:v", "libx264",
                   "-preset", "veryfast", "-pix_fmt", "yuv420p", "-map", "0:a:0", "-ac", "1", "-ar", "16000",
                   "-c:a", "aac", "-movflags", "+faststart", str(mp4),
                   "-map", "0:a:0", "-ac", "1", "-ar", "16000", "-c:a", "pcm_s16le", str(wav))
            meta = {"source": name, "start_s": start, "end_s": start + CLIP_S, "n_frames": n_frames, "fps": 25,
                    "width": 512 if name == A1 else 480, "height": 512 if name == A1 else 480}
            sink.write({"__key__": f"{Path(name).stem}_{i:03d}", "mp4": mp4.read_bytes(), "wav": wav.read_bytes(),
                        "json": json.dumps(meta).encode()})
    return shards


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> str:
    return str(make_shards(tmp_path_factory.mktemp("model-data")))


# Two shared cores also run the DataLoader workers' ffmpeg: one intra-op thread avoids oversubscription.
pytestmark = pytest.mark.usefixtures("torch_one_thread")


def test_batches_have_model_shapes_with_two_workers(shards):
    cfg = TINY
    loader = iter(make_loader(shards, cfg))
    batches = [next(loader) for _ in range(4)]
    t, r = cfg.frames, cfg.resolution
    for b in batches:
        assert b["video"].shape == (cfg.batch_size, 3, t, r, r) and b["video"].dtype == torch.uint8
        assert b["ref"].shape == (cfg.batch_size, 3, r, r) and b["ref"].dtype == torch.uint8
        assert b["mel"].shape == (cfg.batch_size, 4 * t, cfg.n_mels) and torch.isfinite(b["mel"]).all()
        assert b["video"].float().std() > 10  # real picture content, not a blank decode
    # Two shards, two workers: batches alternate between the A1 shard and the E1 shard.
    sources = [{k.split("_")[0] for k in b["key"]} for b in batches]
    assert sources == [{"A1"}, {"E1"}, {"A1"}, {"E1"}]


def test_window_decode_and_mel_are_aligned(shards, tmp_path):
    sample = next(iter(wds.WebDataset(os.path.join(shards, "shard-000000.tar"), shardshuffle=False)))
    mp4 = tmp_path / "clip.mp4"
    mp4.write_bytes(sample["mp4"])
    full = read_frames(str(mp4), 0, 50, 32).astype(int)
    window = read_frames(str(mp4), 17, 8, 32).astype(int)
    assert np.abs(window - full[17:25]).max() <= 1  # the seek lands on frame 17 exactly
    wav = read_wav(sample["wav"])
    assert len(wav) == 2 * 16000
    whole = mel_window(wav, 0, 50, 80)
    assert whole.shape == (200, 80)
    torch.testing.assert_close(mel_window(wav, 17, 8, 80), whole[68:100], atol=1e-4, rtol=1e-4)


def test_tiny_overfits_one_batch(shards):
    cfg = replace(TINY, num_workers=0)
    batch = next(iter(make_loader(shards, cfg)))
    st = build_state(cfg, "cpu")

    def fixed_noise_loss() -> float:
        with torch.no_grad():
            return flow_loss(st.model, *model_inputs(batch, st.device), torch.Generator().manual_seed(1), 0.0).item()

    before = fixed_noise_loss()
    for _ in range(200):
        train_step(st, batch)
    after = fixed_noise_loss()
    assert after < 0.5 * before, (before, after)


def _logged_losses(run_dir: Path) -> dict[int, float]:
    lines = (run_dir / "log.jsonl").read_text().splitlines()
    return {r["step"]: r["loss"] for r in map(json.loads, lines)}


def test_resume_continues_exactly(shards, tmp_path):
    cfg = replace(TINY, batch_size=2, steps=5, log_every=1)
    train(shards, str(tmp_path / "a"), cfg)
    train(shards, str(tmp_path / "b"), cfg, until=3)  # interrupted after step 3 (3 % 2 workers != 0)
    train(shards, str(tmp_path / "b"), resume=True)
    a, b = _logged_losses(tmp_path / "a"), _logged_losses(tmp_path / "b")
    assert sorted(a) == sorted(b) == [1, 2, 3, 4, 5]
    for step in a:
        assert abs(a[step] - b[step]) <= 1e-6, (step, a[step], b[step])
    assert len(set(a.values())) == 5  # every step saw a different batch / noise
    ca = torch.load(tmp_path / "a" / "last.pt", weights_only=True)
    cb = torch.load(tmp_path / "b" / "last.pt", weights_only=True)
    assert ca["step"] == cb["step"] == 5
    for k, v in ca["ema"].items():
        torch.testing.assert_close(cb["ema"][k], v, atol=1e-6, rtol=0)


def _probe(path: Path) -> dict:
    p = subprocess.run(["ffprobe", "-v", "error", "-count_frames", "-show_streams", "-of", "json", str(path)],
                       capture_output=True, check=True)
    return {s["codec_type"]: s for s in json.loads(p.stdout)["streams"]}


def test_sample_writes_mp4_with_audio(tmp_path):
    st = build_state(TINY, "cpu")
    ckpt = tmp_path / "last.pt"
    save_checkpoint(st, str(ckpt))
    ref, audio, out = tmp_path / "ref.png", tmp_path / "speech.wav", tmp_path / "out.mp4"
    ffmpeg("-ss", "1", "-i", str(FOOTAGE / A1), "-frames:v", "1", str(ref))
    ffmpeg("-ss", "3", "-t", "1.5", "-i", str(FOOTAGE / E1), "-vn", "-ac", "1", "-ar", "16000", str(audio))
    cli.main(["sample", "--ckpt", str(ckpt), "--ref", str(ref), "--audio", str(audio), "--out", str(out),
              "--frames", "13", "--steps", "2", "--cfg", "2.0", "--device", "cpu"])
    streams = _probe(out)
    v = streams["video"]
    assert int(v["nb_read_frames"]) == 13
    assert v["r_frame_rate"] == "25/1" and v["avg_frame_rate"] == "25/1"
    assert (v["width"], v["height"]) == (TINY.resolution, TINY.resolution)
    assert "audio" in streams and abs(float(streams["audio"]["duration"]) - 13 / 25) < 0.1
