"""Quality stage: real footage passes, degraded versions made here with ffmpeg are rejected for the right
reason, and the CLIP aesthetic path runs end to end with a randomly initialised open_clip model."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import clip_record, ffmpeg
from curation.engine.config import load_manifest
from curation.engine.record import REJECTED
from stages.base import StageContext
from stages.person import PersonParams, PersonStage
from stages.quality import QualityParams, QualityStage

A1 = "A1_hdtf_bob_menendez_talking_8s.mp4"
ORIGINALS = [A1, "A3_retalk_man_suit_talking_6s.mp4", "E1_liveportrait_d6_single_face_34s.mp4"]

# Degraded versions of A1's first 6 s (FOOTAGE.md filters) and the reason each must get.
FIXTURES = {
    "blurred": (["-vf", "gblur=sigma=4"], "blurry"),
    "dark": (["-vf", "eq=brightness=-0.3"], "too_dark"),
    "tiny": (["-vf", "scale=128:-2"], "low_resolution"),
    "frozen": (["-vf", "select=eq(n\\,0),loop=loop=-1:size=1,fps=25"], "frozen"),
    "slideshow": (["-vf", "select='eq(n\\,0)+eq(n\\,80)+eq(n\\,160)',setpts=N*2/TB,fps=25"], "frozen"),
    "shaking": (["-vf", "crop=w=iw*0.7:h=ih*0.7:x='(iw-ow)/2*(1+sin(n*1.7))':y='(ih-oh)/2*(1+cos(n*2.3))'"],
                "camera_motion"),
}


@pytest.fixture(scope="module")
def person(weights_dir):
    """The person stage as the pipeline runs it before quality (score-only here, so degraded fixtures still
    get a face track to crop from); body counting off: quality only needs the face track."""
    stage = PersonStage(PersonParams(body_check=False), StageContext(weights_dir=str(weights_dir), score_only=True))
    yield stage
    stage.close()


@pytest.fixture(scope="module")
def quality(weights_dir):
    stage = QualityStage(load_manifest().params("quality"), StageContext(weights_dir=str(weights_dir)))
    yield stage
    stage.close()


def _with_track(person, path, start=0.0, end=None):
    (rec,) = person.process([clip_record(path, start, end)])
    assert "face_track" in rec.data, (path, rec.scores)
    return rec


@pytest.fixture(scope="module")
def degraded(tmp_path_factory, footage):
    d = tmp_path_factory.mktemp("quality")
    out = {}
    for name, (vf, _) in FIXTURES.items():
        p = d / f"{name}.mp4"
        ffmpeg("-i", str(footage / A1), "-t", "6", *vf, "-t", "6", "-c:v", "libx264", "-crf", "18", "-preset", "veryfast",
               "-c:a", "aac", str(p))
        out[name] = p
    return out


def test_originals_pass(footage, person, quality):
    for name in ORIGINALS:
        rec = _with_track(person, footage / name)
        (rec,) = quality.process([rec])
        assert rec.status != REJECTED, (name, rec.reason, rec.message)
        for col in ("short_side_px", "luma_mean", "clipped_frac", "sharp_frame", "sharp_face", "brisque",
                    "motion_static_frac", "motion_change", "motion_shift"):
            assert rec.scores[col] is not None, (name, col)


def test_degraded_fixtures_rejected_for_their_reason(degraded, person, quality):
    got = {}
    for name, path in degraded.items():
        rec = _with_track(person, path)
        (rec,) = quality.process([rec])
        got[name] = rec.reason
        assert rec.status == REJECTED and rec.stage == "quality", (name, rec.scores)
    assert got == {name: reason for name, (_, reason) in FIXTURES.items()}
    assert len({got["blurred"], got["dark"], got["tiny"], got["frozen"]}) == 4


def test_face_sharpness_comes_from_the_face_track(footage, person, quality):
    """Blurring only the face (the track's box) drops the face score and leaves the frame score high."""
    rec = _with_track(person, footage / A1, 0.0, 6.0)
    p = quality.params
    sharp = quality.measure(rec)
    # move the track off the face: onto a corner of the background
    moved = dict(rec.data["face_track"])
    moved["boxes"] = [[0, 0, 100, 100] if b is not None else None for b in moved["boxes"]]
    rec.data["face_track"] = moved
    corner = quality.measure(rec)
    assert sharp["sharp_frame"] == pytest.approx(corner["sharp_frame"])
    assert sharp["sharp_face"] > p.min_sharp_face > 0
    assert corner["sharp_face"] != pytest.approx(sharp["sharp_face"], rel=0.2)
    # no face track at all: the face score is not measured and not checked
    del rec.data["face_track"]
    (out,) = quality.process([rec])
    assert out.status != REJECTED and out.scores["sharp_face"] is None


def test_working_resolution_makes_scores_size_independent(tmp_path, footage, person, quality):
    """The same picture at 512 and at 768 px gets nearly the same frame scores (the face track is scaled
    with the picture)."""
    big = tmp_path / "big.mp4"
    ffmpeg("-i", str(footage / A1), "-t", "5.2", "-vf", "scale=768:768:flags=lanczos", "-c:v", "libx264", "-crf", "14",
           "-preset", "veryfast", "-c:a", "aac", str(big))
    rec = _with_track(person, footage / A1, 0.0, 5.2)
    a = quality.measure(rec)
    rec_big = clip_record(big)
    tr = rec.data["face_track"]
    rec_big.data["face_track"] = {"t": tr["t"], "boxes": [[v * 1.5 for v in b] if b else None for b in tr["boxes"]]}
    b = quality.measure(rec_big)
    for col in ("luma_mean", "motion_change"):
        assert b[col] == pytest.approx(a[col], rel=0.1), col
    for col in ("sharp_frame", "sharp_face"):
        assert b[col] == pytest.approx(a[col], rel=0.35), col


TINY_CLIP = {"embed_dim": 512, "quick_gelu": True,
             "vision_cfg": {"image_size": 64, "layers": 1, "width": 64, "head_width": 32, "patch_size": 32},
             "text_cfg": {"context_length": 16, "vocab_size": 1000, "width": 32, "heads": 1, "layers": 1}}


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    """A randomly initialised open_clip model with ViT-B-32's 512-d embedding, saved as a checkpoint file."""
    import open_clip
    import torch

    d = tmp_path_factory.mktemp("clip")
    cfg = d / "tinyclip-test.json"
    cfg.write_text(json.dumps(TINY_CLIP))
    open_clip.add_model_config(str(cfg))
    torch.manual_seed(0)
    model = open_clip.create_model("tinyclip-test")
    ck = d / "tiny_clip.pt"
    torch.save(model.state_dict(), ck)
    return {"config": str(cfg), "checkpoint": str(ck), "model": model.eval()}


def test_clip_aesthetic_against_the_head_formula(footage, weights_dir, person, tiny_clip):
    import torch
    from PIL import Image

    params = load_manifest().params("quality").model_copy(update={
        "aesthetic_clip_path": tiny_clip["checkpoint"], "aesthetic_clip_arch": "tinyclip-test",
        "aesthetic_clip_config": tiny_clip["config"], "aesthetic_samples": 2, "brisque": False})
    assert QualityStage.required_weights(params) == ["aesthetic_vit_b_32"]
    QualityStage.check_startup(params, str(weights_dir))
    stage = QualityStage(params, StageContext(weights_dir=str(weights_dir)))
    rec = _with_track(person, footage / A1, 0.0, 5.0)
    sc = stage.measure(rec)
    # independently: the saved model's image embedding (fresh model from the file), then w . e/|e| + b
    frames = []
    from curation.media.frames import geometry, iter_samples
    from curation.perception.imagequality import resize_short

    geo = geometry(rec.probe, short_side=params.decode_short_side)
    for _, rgb in iter_samples(rec.source, rec.start_s, rec.end_s, params.sample_fps, geo):
        frames.append(resize_short(rgb, params.work_short_side))
    picks = [frames[0], frames[-1]]
    import open_clip

    model = open_clip.create_model("tinyclip-test")
    model.load_state_dict(torch.load(tiny_clip["checkpoint"], weights_only=True))
    model.eval()
    size = TINY_CLIP["vision_cfg"]["image_size"]
    xs = []
    for f in picks:
        img = Image.fromarray(f).convert("RGB")
        w, h = img.size
        s = size / min(w, h)
        img = img.resize((int(w * s), int(h * s)), Image.BICUBIC)  # torchvision Resize truncates
        left, top = (img.size[0] - size) // 2, (img.size[1] - size) // 2
        img = img.crop((left, top, left + size, top + size))
        x = (np.asarray(img, np.float32) / 255 - open_clip.OPENAI_DATASET_MEAN) / open_clip.OPENAI_DATASET_STD
        xs.append(torch.from_numpy(x.transpose(2, 0, 1).astype(np.float32)))
    with torch.no_grad():
        e = model.encode_image(torch.stack(xs)).numpy().astype(np.float64)
    head = torch.load(weights_dir / "laion_aesthetic" / "sa_0_4_vit_b_32_linear.pth", weights_only=True)
    w, b = head["weight"].numpy().reshape(-1).astype(np.float64), float(head["bias"])
    want = float(np.mean((e / np.linalg.norm(e, axis=1, keepdims=True)) @ w + b))
    assert sc["aesthetic"] == pytest.approx(want, abs=2e-3)
    # the threshold applies with its own reason
    strict = QualityStage(params.model_copy(update={"min_aesthetic": want + 1.0}), StageContext(weights_dir=str(weights_dir)))
    (out,) = strict.process([rec])
    assert out.status == REJECTED and out.reason == "low_aesthetic" and out.scores["aesthetic"] == pytest.approx(want, abs=2e-3)


def test_startup_checks(tmp_path, weights_dir):
    from curation.weights import WeightsMissing

    p = load_manifest().params("quality")
    assert QualityStage.required_weights(p) == ["brisque_model", "brisque_range"]
    assert p.aesthetic_clip_path is None  # the default manifest leaves the CLIP aesthetic score off
    with pytest.raises(WeightsMissing, match="quality"):
        QualityStage.check_startup(p, str(tmp_path))
    on = p.model_copy(update={"aesthetic_clip_path": str(tmp_path / "missing_clip.pt")})
    with pytest.raises(FileNotFoundError, match="aesthetic_clip_path"):
        QualityStage.check_startup(on, str(weights_dir))
    (tmp_path / "clip.pt").write_bytes(b"x")
    wrong = on.model_copy(update={"aesthetic_clip_path": str(tmp_path / "clip.pt"), "aesthetic_clip_arch": "ViT-L-14"})
    with pytest.raises(ValueError, match="aesthetic_vit_l_14"):
        QualityStage.check_startup(wrong, str(weights_dir))
