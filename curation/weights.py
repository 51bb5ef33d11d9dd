"""Weight files: one registry with each file's official URL and known sha256s, found by name in a weights
directory.

The directory is `--weights DIR`, else `$CURATION_WEIGHTS`, else `~/.cache/talkcurate/weights`.
Nothing is downloaded at run time: `curation weights fetch NAME` is the one explicit download path.

A file is accepted when it passes one of its checks (`check_file` says which):
  - `sha256`: one of the hashes known for it, each with what it is (the official download, or a known build);
  - `bundle`: for a MediaPipe Tasks bundle whose official hash is not known here (pose_landmarker,
    hand_landmarker: the official files are "latest" and were not reachable when this was written), a
    structural check: a zip holding exactly the expected TFLite models, each a TFLite flatbuffer.
So `weights fetch pose_landmarker` accepts the official download, and the bundles assembled from the
networks the mediapipe wheel ships (../shared/weights) are accepted by their hash."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

DEFAULT_DIR = Path.home() / ".cache" / "talkcurate" / "weights"


@dataclass(frozen=True)
class WeightFile:
    name: str
    path: str  # relative to the weights directory
    url: str
    sha256: str | None  # the official download's hash, where known
    license: str
    used_by: str
    # other files accepted under this name: (sha256, what it is)
    also: tuple[tuple[str, str], ...] = ()
    # a MediaPipe Tasks bundle: the TFLite models the zip must hold (the structural check)
    bundle: tuple[str, ...] = ()
    # other names the file may have in the weights directory (an official download keeps its own name)
    alt_paths: tuple[str, ...] = ()

    def hashes(self) -> dict[str, str]:
        """Every sha256 accepted for this file -> what it is."""
        out = {h: kind for h, kind in self.also}
        if self.sha256:
            out[self.sha256] = "official download"
        return out


REGISTRY: dict[str, WeightFile] = {w.name: w for w in [
    WeightFile("yunet", "yunet/face_detection_yunet_2026may.onnx",
               "https://github.com/opencv/opencv_zoo/raw/main/models/face_detection_yunet/face_detection_yunet_2026may.onnx",
               "ebafce4e3c118d6554634be5c27ab333b4c047a9a8c3faf1d7cf93101c22f0f0", "MIT", "person (face backend yunet)"),
    WeightFile("scrfd_500m", "scrfd/scrfd_500m.onnx",
               "https://github.com/deepinsight/insightface/releases/download/v0.7/buffalo_s.zip#det_500m.onnx",
               "5e4447f50245bbd7966bd6c0fa52938c61474a04ec7def48753668a9d8b4ea3a",
               "InsightFace: non-commercial research only", "person (face backend scrfd)"),
    WeightFile("scrfd_2.5g", "scrfd/scrfd_2.5g.onnx",
               "https://github.com/deepinsight/insightface/releases/download/v0.7/buffalo_m.zip#det_2.5g.onnx",
               "041f73f47371333d1d17a6fee6c8ab4e6aecabefe398ff32cca4e2d5eaee0af9",
               "InsightFace: non-commercial research only", "person (face backend scrfd)"),
    WeightFile("pose_landmarker", "mediapipe/pose_landmarker_full_assembled.task",
               "https://storage.googleapis.com/mediapipe-models/pose_landmarker/pose_landmarker_full/float16/latest/pose_landmarker_full.task",
               None, "Apache-2.0", "person, skeleton",
               also=(("778077a5ce0257b537b7564ed7a2139efee92a5553b11e25276cb979c8aed264",
                      "bundle assembled from the mediapipe 0.10.21 wheel's pose models (../shared/weights)"),),
               bundle=("pose_detector.tflite", "pose_landmarks_detector.tflite"),
               alt_paths=("mediapipe/pose_landmarker_full.task",)),
    WeightFile("hand_landmarker", "mediapipe/hand_landmarker_full_assembled.task",
               "https://storage.googleapis.com/mediapipe-models/hand_landmarker/hand_landmarker/float16/latest/hand_landmarker.task",
               None, "Apache-2.0", "skeleton",
               also=(("a08dce83245045e1241c63f00b97309df93ced2c375ad0ebd999fc592c786efc",
                      "bundle assembled from the mediapipe 0.10.21 wheel's hand models (../shared/weights)"),),
               bundle=("hand_detector.tflite", "hand_landmarks_detector.tflite"),
               alt_paths=("mediapipe/hand_landmarker.task",)),
    WeightFile("face_landmarker", "mediapipe/face_landmarker.task",
               "https://storage.googleapis.com/mediapipe-models/face_landmarker/face_landmarker/float16/1/face_landmarker.task",
               "64184e229b263107bc2b804c6625db1341ff2bb731874b0bcc2fe6544e0bc9ff", "Apache-2.0", "sync (landmarks), skeleton"),
    WeightFile("brisque_model", "brisque/brisque_model_live.yml",
               "https://raw.githubusercontent.com/opencv/opencv_contrib/master/modules/quality/samples/brisque_model_live.yml",
               "4c44c7eec9e5139830c0bb0e4a044c9cd351ba5bbc9e3798beca3243e2782ff4", "Apache-2.0", "quality"),
    WeightFile("brisque_range", "brisque/brisque_range_live.yml",
               "https://raw.githubusercontent.com/opencv/opencv_contrib/master/modules/quality/samples/brisque_range_live.yml",
               "a18427f4f7ad087524bd0d63389649a3899b51ca6d44a4d5f8d8171f1f914a9c", "Apache-2.0", "quality"),
    WeightFile("aesthetic_vit_b_32", "laion_aesthetic/sa_0_4_vit_b_32_linear.pth",
               "https://github.com/LAION-AI/aesthetic-predictor/raw/main/sa_0_4_vit_b_32_linear.pth",
               "c7b14cead230694acc7b9447974d3cad78003c72da032e402a303b6c2429e85f", "MIT", "quality (CLIP aesthetic)"),
    WeightFile("aesthetic_vit_b_16", "laion_aesthetic/sa_0_4_vit_b_16_linear.pth",
               "https://github.com/LAION-AI/aesthetic-predictor/raw/main/sa_0_4_vit_b_16_linear.pth",
               "8ad3923d7ecf019df20ecd2ab5542a3075fbba0278d239c0371345f3d7fcbde0", "MIT", "quality (CLIP aesthetic)"),
    WeightFile("aesthetic_vit_l_14", "laion_aesthetic/sa_0_4_vit_l_14_linear.pth",
               "https://github.com/LAION-AI/aesthetic-predictor/raw/main/sa_0_4_vit_l_14_linear.pth",
               "2cd4e60f4f24ae3bcd57b847b13c1f3ba27edc28cc1a7f9ce74ee9f421243cba", "MIT", "quality (CLIP aesthetic)"),
    WeightFile("silero_vad", "silero_vad/silero_vad.onnx",
               "https://github.com/snakers4/silero-vad/raw/v6.2/src/silero_vad/data/silero_vad.onnx",
               "1a153a22f4509e292a94e67d6f9b85e8deb25b4988682b7e174c65279d8788e3", "MIT", "sync (speech presence)"),
    WeightFile("syncnet_v2", "syncnet/syncnet_v2.model",
               "http://www.robots.ox.ac.uk/~vgg/software/lipsync/data/syncnet_v2.model",
               "961e8696f888fce4f3f3a6c3d5b3267cf5b343100b238e79b2659bff2c605442", "MIT (syncnet_python)", "sync (backend syncnet)"),
    WeightFile("dwpose_ll_ucoco_384", "dwpose/dw-ll_ucoco_384.onnx",
               "https://huggingface.co/yzd-v/DWPose/resolve/main/dw-ll_ucoco_384.onnx",
               None, "Apache-2.0", "skeleton (backend dwpose)"),
    WeightFile("dwpose_yolox_l", "dwpose/yolox_l.onnx",
               "https://huggingface.co/yzd-v/DWPose/resolve/main/yolox_l.onnx",
               None, "Apache-2.0", "skeleton (backend dwpose)"),
]}


class WeightsMissing(FileNotFoundError):
    pass


def weights_dir(explicit: str | os.PathLike | None = None) -> Path:
    if explicit:
        return Path(explicit).expanduser()
    env = os.environ.get("CURATION_WEIGHTS")
    return Path(env).expanduser() if env else DEFAULT_DIR


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def check_bundle(path: str | os.PathLike, members: tuple[str, ...]) -> str | None:
    """None when `path` is a zip holding exactly `members`, each a TFLite flatbuffer ("TFL3" at byte 4);
    else what is wrong."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as z:
            names = sorted(i.filename for i in z.infolist() if not i.is_dir())
            if names != sorted(members):
                return f"holds {names}, expected {sorted(members)}"
            for m in members:
                with z.open(m) as f:
                    head = f.read(8)
                if head[4:8] != b"TFL3":
                    return f"{m} is not a TFLite model"
    except (zipfile.BadZipFile, OSError) as e:
        return f"not a zip bundle ({e.__class__.__name__}: {e})"
    return None


@dataclass(frozen=True)
class Check:
    ok: bool
    kind: str  # "sha256" | "bundle" | "none" (nothing known to check) | "missing"
    detail: str


def check_file(name: str, path: str | os.PathLike) -> Check:
    """Which check the file at `path` passes as weight file `name`: a known sha256, else the bundle structure."""
    w = REGISTRY[name]
    if not Path(path).is_file():
        return Check(False, "missing", f"{path} not found")
    hashes = w.hashes()
    digest = sha256_file(path) if hashes or not w.bundle else None
    if digest in hashes:
        return Check(True, "sha256", hashes[digest])
    if w.bundle:
        why = check_bundle(path, w.bundle)
        if why is None:
            return Check(True, "bundle", f"zip with {', '.join(w.bundle)} (TFLite); its sha256 is not one known here")
        return Check(False, "bundle", f"not a {name} bundle: {why}")
    if hashes:
        return Check(False, "sha256", f"sha256 {digest} is none of the known {', '.join(sorted(hashes))}")
    return Check(True, "none", "no hash known for this file: present, not checked")


def local_path(name: str, directory: str | os.PathLike | None = None) -> Path:
    """Where weight file `name` is in the directory: its registry path, else an alternative name, else the
    registry path (missing)."""
    w = REGISTRY[name]
    d = weights_dir(directory)
    for rel in (w.path, *w.alt_paths):
        if (d / rel).is_file():
            return d / rel
    return d / w.path


def resolve(name: str, directory: str | os.PathLike | None = None, stage: str | None = None,
            verify: bool = False) -> Path:
    """The local path of weight file `name`; WeightsMissing names the file, the stage and the URL."""
    w = REGISTRY[name]
    p = local_path(name, directory)
    if not p.is_file():
        raise WeightsMissing(
            f"weight file '{w.path}' ({name}) needed by stage '{stage or w.used_by}' is not in {weights_dir(directory)}; "
            f"get it with `curation weights fetch {name}` (from {w.url}) or point --weights / CURATION_WEIGHTS at a folder that has it")
    if verify:
        c = check_file(name, p)
        if not c.ok:
            raise WeightsMissing(f"weight file {p} fails its check: {c.detail}")
    return p


def fetch(name: str, directory: str | os.PathLike | None = None, timeout: float = 60.0) -> Path:
    """Download `name` from its official URL into the weights directory and check it (check_file)."""
    import requests

    w = REGISTRY[name]
    # an official download keeps its official name where the registry knows one
    dest = weights_dir(directory) / (w.alt_paths[0] if w.alt_paths else w.path)
    dest.parent.mkdir(parents=True, exist_ok=True)
    url = w.url.split("#", 1)[0]
    if "#" in w.url:
        raise RuntimeError(f"{name} ships inside an archive ({url}); download it and extract {w.url.split('#', 1)[1]} to {dest}")
    tmp = dest.with_suffix(dest.suffix + ".part")
    try:
        with requests.get(url, stream=True, timeout=timeout) as r:
            r.raise_for_status()
            with open(tmp, "wb") as f:
                for chunk in r.iter_content(1 << 20):
                    f.write(chunk)
    except requests.RequestException as e:
        tmp.unlink(missing_ok=True)
        raise RuntimeError(f"cannot download {name} from {url}: {e.__class__.__name__}: {e}") from None
    c = check_file(name, tmp)
    if not c.ok:
        tmp.unlink(missing_ok=True)
        raise RuntimeError(f"{name}: the downloaded file fails its check: {c.detail}")
    os.replace(tmp, dest)
    return dest
