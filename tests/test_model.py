"""The bundled model on real footage: training view, loader, overfitting, exact resume and sampling (tiny, CPU)."""

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
from curation.dit.data import decode_square, mel_window, read_wav
from curation.dit.flow import flow_loss, sample
from curation.dit.loader import WindowBatches, make_loader
from curation.dit.train import build_state, model_inputs, save_checkpoint, train, train_step
from curation.dit.view import prepare_view, read_view

ROOT = Path(__file__).resolve().parent.parent
FOOTAGE = Path(os.environ.get("CURATION_FOOTAGE", ROOT.parent / "shared" / "footage"))
A1 = "A1_hdtf_bob_menendez_talking_8s.mp4"  # 512x512 25 fps
E1 = "E1_liveportrait_d6_single_face_34s.mp4"  # 480x480 30 fps, resampled to 25
CLIPS = [(A1, 0.0), (A1, 2.5), (A1, 5.0), (E1, 3.0), (E1, 12.0), (E1, 21.0)]
CLIP_S = 2.0
TINY = replace(CONFIGS["tiny"], num_workers=2, hflip=0.5)


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


@pytest.fixture(scope="module")
def view(shards, tmp_path_factory) -> str:
    out = str(tmp_path_factory.mktemp("model-view") / "view")
    prepare_view(shards, TINY, out, workers=2, progress=False)
    return out


# Two shared cores also run the DataLoader workers: one intra-op thread avoids oversubscription.
pytestmark = pytest.mark.usefixtures("torch_one_thread")


def test_view_windows_match_a_direct_decode(shards, view, tmp_path):
    meta = read_view(view)
    assert meta["clips"] == len(CLIPS) and meta["frames"] == len(CLIPS) * 50 and meta["left_out"] == []
    assert meta["params"]["resolution"] == TINY.resolution and meta["params"]["frames"] == TINY.frames
    cfg = replace(TINY, batch_size=6, hflip=0.0)
    batch = next(iter(make_loader(view, cfg, num_workers=0)))
    t, r = cfg.frames, cfg.resolution
    assert batch["video"].shape == (6, 3, t, r, r) and batch["video"].dtype == torch.uint8
    assert batch["ref"].shape == (6, 3, r, r) and batch["mel"].shape == (6, 4 * t, cfg.n_mels)
    assert sorted(batch["key"]) == sorted(f"{Path(n).stem}_{i:03d}" for i, (n, _) in enumerate(CLIPS))  # epoch
    samples = {s["__key__"]: s for s in wds.WebDataset(sorted(map(str, Path(shards).glob("*.tar"))),
                                                       shardshuffle=False)}
    for k, key in enumerate(batch["key"]):
        start = int(batch["start"][k])
        mp4 = tmp_path / f"{key}.mp4"
        mp4.write_bytes(samples[key]["mp4"])
        # An independent decode that seeks to the window gives the view's frames.
        window = torch.from_numpy(decode_square(str(mp4), r, start, t)).permute(3, 0, 1, 2).int()
        assert (window - batch["video"][k].int()).abs().max() <= 1, key
        ref = torch.from_numpy(decode_square(str(mp4), r, 0, 1)[0]).permute(2, 0, 1).int()
        assert (ref - batch["ref"][k].int()).abs().max() <= 1, key
        # The mel rows are those of the window's audio (float16 in the view).
        want = mel_window(read_wav(samples[key]["wav"]), start, t, cfg.n_mels)
        torch.testing.assert_close(batch["mel"][k], want, atol=2e-2, rtol=2e-3)
    assert batch["video"].float().std() > 10  # real picture content, not a blank decode


def test_batches_depend_only_on_the_batch_index(view):
    two = iter(make_loader(view, TINY))  # two worker processes
    batches = [next(two) for _ in range(5)]
    later = iter(make_loader(view, TINY, start_batch=3, num_workers=0))
    for b in batches[3:]:
        a = next(later)
        assert a["key"] == b["key"] and torch.equal(a["start"], b["start"])
        assert torch.equal(a["video"], b["video"]) and torch.equal(a["ref"], b["ref"]) and torch.equal(a["mel"], b["mel"])
    assert len({(k, int(s)) for b in batches for k, s in zip(b["key"], b["start"])}) > 15  # windows vary
    # hflip mirrors clip and reference together, in about half of the samples.
    plain, mirrored = WindowBatches(view, replace(TINY, hflip=0.0)), WindowBatches(view, TINY)
    flips = 0
    for g in range(40):
        a, b = plain.sample(g), mirrored.sample(g)
        assert a["start"] == b["start"] and torch.equal(a["mel"], b["mel"])
        if not torch.equal(a["video"], b["video"]):
            flips += 1
            assert torch.equal(a["video"].flip(-1), b["video"]) and torch.equal(a["ref"].flip(-1), b["ref"])
    assert 10 <= flips <= 30, flips


def test_training_refuses_a_view_made_for_other_settings(view, tmp_path):
    with pytest.raises(ValueError, match="resolution 32 .*wants 48"):
        train(view, str(tmp_path / "run"), replace(TINY, resolution=48, steps=1))


def test_tiny_overfits_one_batch(view):
    cfg = replace(TINY, num_workers=0)
    batch = next(iter(make_loader(view, cfg)))
    st = build_state(cfg, "cpu")

    def fixed_noise_loss() -> float:
        with torch.no_grad():
            return flow_loss(st.model, *model_inputs(batch, st.device), torch.Generator().manual_seed(1), 0.0).item()

    before = fixed_noise_loss()
    for _ in range(200):
        train_step(st, batch)
    after = fixed_noise_loss()
    assert after < 0.5 * before, (before, after)


def test_untrained_model_samples_the_reference_repeated(view):
    """x-prediction around the reference: a zero network output means 'the reference frame, still', so the
    sampler, with or without guidance, must land on it exactly from any noise."""
    cfg = replace(TINY, num_workers=0)
    batch = next(iter(make_loader(view, cfg)))
    _, ref, mel = model_inputs(batch, torch.device("cpu"))
    model = build_state(cfg, "cpu").model.eval()
    for scale in (1.0, 3.0):
        out = sample(model, ref, mel, cfg.frames, 4, scale, torch.Generator().manual_seed(0))
        torch.testing.assert_close(out, ref[:, :, None].expand_as(out), atol=1e-5, rtol=0)


def _logged_losses(run_dir: Path) -> dict[int, float]:
    lines = (run_dir / "log.jsonl").read_text().splitlines()
    return {r["step"]: r["loss"] for r in map(json.loads, lines)}


def test_resume_continues_exactly(shards, view, tmp_path):
    cfg = replace(TINY, batch_size=2, steps=5, log_every=1)
    train(shards, str(tmp_path / "a"), cfg, progress=False)  # curation shards: prepares a/view first
    assert read_view(str(tmp_path / "a" / "view"))["clips"] == len(CLIPS)
    train(view, str(tmp_path / "b"), cfg, until=3)  # interrupted after step 3 (3 % 2 workers != 0)
    train(view, str(tmp_path / "b"), resume=True)
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


def test_checkpoint_of_another_parametrisation_is_refused(tmp_path):
    """A checkpoint trained before the x0-around-reference output (no "prediction" entry) loads its weights
    without error but would sample noise: training and sampling refuse it, naming the cause."""
    from curation.dit.sample import load_model
    from curation.dit.train import load_checkpoint

    ckpt = tmp_path / "last.pt"
    save_checkpoint(build_state(TINY, "cpu"), str(ckpt))
    load_model(str(ckpt), "cpu")  # this model's own checkpoints load
    old = torch.load(ckpt, map_location="cpu", weights_only=True)
    del old["prediction"]
    torch.save(old, ckpt)
    for load in (lambda: load_model(str(ckpt), "cpu"), lambda: load_checkpoint(str(ckpt), "cpu")):
        with pytest.raises(ValueError, match="x0-around-reference"):
            load()
