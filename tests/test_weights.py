"""The weights registry accepts what a user really downloads, and `weights list` says which check passed."""

from __future__ import annotations

import zipfile

from conftest import run_cli


def _repack(src, dest, drop: str | None = None, compress: bool = True) -> None:
    """The same TFLite models in another zip (other order, compressed): another sha256, the same structure,
    as the official download has."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dest, "w", zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED) as zout:
        for info in reversed(zin.infolist()):
            if info.filename != drop:
                zout.writestr(info.filename, zin.read(info.filename))


def test_bundle_check_accepts_other_builds_and_refuses_the_rest(weights_dir, tmp_path):
    from curation.weights import REGISTRY, check_file, resolve, sha256_file

    w = REGISTRY["pose_landmarker"]
    shipped = weights_dir / w.path
    c = check_file("pose_landmarker", shipped)
    assert c.ok and c.kind == "sha256" and "assembled" in c.detail

    d = tmp_path / "w"
    (d / "mediapipe").mkdir(parents=True)
    official = d / w.alt_paths[0]  # an official download keeps its own name
    _repack(shipped, official)
    assert sha256_file(official) not in w.hashes()
    c = check_file("pose_landmarker", official)
    assert c.ok and c.kind == "bundle", c
    assert resolve("pose_landmarker", d, verify=True) == official

    broken = tmp_path / "broken.task"
    _repack(shipped, broken, drop="pose_landmarks_detector.tflite")
    c = check_file("pose_landmarker", broken)
    assert not c.ok and "expected" in c.detail
    notzip = tmp_path / "html.task"
    notzip.write_text("<html>404</html>")
    assert not check_file("hand_landmarker", notzip).ok
    # a bundle of the other model: the right shape, the wrong members
    assert not check_file("hand_landmarker", official).ok

    # a file with a known hash that is wrong is refused, naming the hashes
    (d / "yunet").mkdir()
    (d / REGISTRY["yunet"].path).write_bytes(b"not yunet")
    c = check_file("yunet", d / REGISTRY["yunet"].path)
    assert not c.ok and c.kind == "sha256"


def test_weights_list_names_the_check_each_file_passed(weights_dir, tmp_path):
    p = run_cli("weights", "list", "--weights", str(weights_dir))
    lines = {ln.split()[0]: ln for ln in p.stdout.splitlines()[1:]}
    assert "ok: sha256" in lines["yunet"] and "ok: sha256" in lines["pose_landmarker"]
    assert "missing" in lines["syncnet_v2"]

    d = tmp_path / "w"  # a user's folder: the official hand bundle (another build) and a corrupt yunet
    (d / "mediapipe").mkdir(parents=True)
    (d / "yunet").mkdir()
    _repack(weights_dir / "mediapipe/hand_landmarker_full_assembled.task", d / "mediapipe/hand_landmarker.task")
    (d / "yunet" / "face_detection_yunet_2026may.onnx").write_bytes(b"corrupt")
    p = run_cli("weights", "list", "--weights", str(d), check=False)
    assert p.returncode == 1
    lines = {ln.split()[0]: ln for ln in p.stdout.splitlines()[1:]}
    assert "ok: bundle" in lines["hand_landmarker"] and "mediapipe/hand_landmarker.task" in lines["hand_landmarker"]
    assert "missing" in lines["pose_landmarker"] and "FAILED" in lines["yunet"]
