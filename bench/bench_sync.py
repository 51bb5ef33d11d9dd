"""Time the sync stage's SyncNet backend against syncnet-python's own full pipeline on the same clips.

    .venv/bin/python bench/bench_sync.py [--clips A1_...mp4 A3_...mp4] [--threads 2] [--device cpu]

syncnet-python's `SyncNetPipeline.inference(video)` is what a TalkVerse-style run would call per clip: AVI
conversion, JPEG frames, S3FD on every frame, scene detection, tracking, XVID crops, JPEG crops again, then
SyncNet in batches of 20 windows. This stage instead takes the person stage's face track and scores the clip
in one decode and one batched pass. Both run here in one process, on the same clips, with the same torch
threads, one after the other per clip; wall and CPU seconds (ffmpeg children included) are printed per clip
and in total, with the ratio.

The real weights cannot be downloaded here, so both sides get weights of the right shapes:
- SyncNet: one randomly initialised `S`, saved as a state dict like syncnet_v2.model, used by both sides.
- S3FD: a randomly initialised `S3FDNet` (the whole VGG body runs as with the real weights) whose
  detection heads are set so that it behaves like the real detector on a talking head: one confident
  face box (half the frame, centred) per frame from its coarsest prior, every other prior at background.
  Left fully random, every one of its ~5000 priors passes the 0.05 pre-NMS threshold and its Python NMS
  loop costs seconds per frame, which would make the comparison meaningless (and flattering).
  Square clips give one box per frame (non-square frames have several coarsest priors: several tracks).

The person stage's own time (which a pipeline pays anyway, for its own decisions) is printed apart; the
ratio is the sync stage against syncnet-python's pipeline."""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

DEFAULT_CLIPS = ["A1_hdtf_bob_menendez_talking_8s.mp4", "A3_retalk_man_suit_talking_6s.mp4",
                 "A4_retalk_woman_glasses_talking_5s.mp4"]


@contextlib.contextmanager
def quiet_fds():
    """Silence stdout/stderr at the file-descriptor level (ffmpeg-python and syncnet-python print a lot)."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(os.devnull, "w") as null:
        os.dup2(null.fileno(), 1)
        os.dup2(null.fileno(), 2)
        try:
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])


def make_weights(d: Path, seed: int = 0) -> tuple[Path, Path]:
    import torch
    from syncnet_python.detectors.s3fd.nets import S3FDNet
    from syncnet_python.SyncNetModel import S

    torch.manual_seed(seed)
    sn_path = d / "syncnet" / "syncnet_v2.model"
    sn_path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(S().state_dict(), sn_path)

    net = S3FDNet(device="cpu")
    with torch.no_grad():
        for i, (conf, loc) in enumerate(zip(net.conf, net.loc)):
            conf.weight.zero_()
            loc.weight.zero_()
            loc.bias.zero_()
            conf.bias.zero_()
            if i == 0:
                conf.bias[:3] = 8.0  # background (max-out over the first three channels)
            else:
                conf.bias[0] = 8.0
        last = len(net.conf) - 1
        net.conf[last].bias.copy_(torch.tensor([0.0, 8.0]))  # face, p = 0.9997
        # decoded size = prior size (4 x the scaled frame) * exp(0.2 * b) = half the frame
        net.loc[last].bias[2:] = 5.0 * math.log(0.125)
    s3_path = d / "sfd_face.pth"
    torch.save(net.state_dict(), s3_path)
    return sn_path, s3_path


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clips", nargs="*", default=DEFAULT_CLIPS, help="files (names in the footage folder or paths)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads for both sides")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--batch-windows", type=int, default=16, help="this stage's windows per network call")
    ap.add_argument("--backend", default="syncnet", choices=["syncnet", "landmarks"],
                    help="landmarks: time the default manifest's weights-free backend alone (no comparison)")
    args = ap.parse_args()
    if args.backend == "landmarks":
        return bench_landmarks(args)

    import torch
    from conftest import FOOTAGE, WEIGHTS, clip_record
    from syncnet_python.syncnet_pipeline import SyncNetPipeline

    from curation.engine.config import load_manifest
    from curation.weights import sha256_file
    from stages.base import StageContext, cpu_seconds
    from stages.person import PersonStage
    from stages.sync import SyncStage

    torch.set_num_threads(args.threads)
    tmp = Path(tempfile.mkdtemp(prefix="bench_sync_"))
    sn_path, s3_path = make_weights(tmp)
    # the stage's weights folder: the random SyncNet plus the real Silero VAD
    (tmp / "silero_vad").mkdir()
    os.symlink(WEIGHTS / "silero_vad" / "silero_vad.onnx", tmp / "silero_vad" / "silero_vad.onnx")

    m = load_manifest("talkverse")
    person = PersonStage(m.params("person"), StageContext(weights_dir=str(WEIGHTS)))
    sp = m.params("sync").model_copy(update={"syncnet_sha256": sha256_file(sn_path), "threads": args.threads,
                                              "device": args.device, "syncnet_batch_windows": args.batch_windows})
    stage = SyncStage(sp, StageContext(weights_dir=str(tmp), use_gpu=args.device == "cuda"))
    theirs = SyncNetPipeline({"s3fd_weights": str(s3_path), "syncnet_weights": str(sn_path)}, device=args.device)

    print(f"torch threads {args.threads}, device {args.device}, cores {os.cpu_count()}, "
          f"load average {os.getloadavg()[0]:.1f}")
    print(f"{'clip':<40} {'s':>5} | {'person wall/cpu':>15} | {'sync wall/cpu':>15} | "
          f"{'syncnet-python wall/cpu':>23} | ratio wall / cpu | offsets (ours, theirs in our sign)")
    tot = {"pw": 0.0, "pc": 0.0, "ow": 0.0, "oc": 0.0, "tw": 0.0, "tc": 0.0, "s": 0.0}
    # warm up both (model loading, first-call allocations) on the first clip, untimed
    first = Path(args.clips[0]) if "/" in args.clips[0] else FOOTAGE / args.clips[0]
    with quiet_fds():
        rec = clip_record(first, 0.0, 2.4)
        (rec,) = person.process([rec])
        stage.process([rec])
    for name in args.clips:
        path = Path(name) if "/" in name else FOOTAGE / name
        rec = clip_record(path)
        w0, c0 = time.perf_counter(), cpu_seconds()
        with quiet_fds():
            (rec,) = person.process([rec])
        pw, pc = time.perf_counter() - w0, cpu_seconds() - c0
        if "face_track" not in rec.data:
            print(f"{path.name}: the person stage found no face track ({rec.reason}); skipped")
            continue
        w0, c0 = time.perf_counter(), cpu_seconds()
        (rec,) = stage.process([rec])
        ow, oc = time.perf_counter() - w0, cpu_seconds() - c0
        if rec.reason and rec.reason.startswith("error"):
            print(f"{path.name}: sync stage error: {rec.message}")
            continue
        w0, c0 = time.perf_counter(), cpu_seconds()
        with quiet_fds():
            res = theirs.inference(str(path), None)
        tw, tc = time.perf_counter() - w0, cpu_seconds() - c0
        offs = [-o for o in res[0]]
        dur = rec.duration_s
        for k, v in (("pw", pw), ("pc", pc), ("ow", ow), ("oc", oc), ("tw", tw), ("tc", tc), ("s", dur)):
            tot[k] += v
        print(f"{path.name[:40]:<40} {dur:5.1f} | {pw:6.1f} / {pc:6.1f} | {ow:6.1f} / {oc:6.1f} | "
              f"{tw:10.1f} / {tc:10.1f} | {tw / ow:5.1f}x / {tc / oc:5.1f}x | "
              f"{rec.scores.get('sync_offset')}, {offs}")
    if tot["s"] == 0:
        return 1
    print(f"{'total':<40} {tot['s']:5.1f} | {tot['pw']:6.1f} / {tot['pc']:6.1f} | {tot['ow']:6.1f} / {tot['oc']:6.1f} | "
          f"{tot['tw']:10.1f} / {tot['tc']:10.1f} | {tot['tw'] / tot['ow']:5.1f}x / {tot['tc'] / tot['oc']:5.1f}x")
    print(f"sync stage: {tot['oc'] / tot['s']:.2f} CPU-s per footage-s; syncnet-python pipeline: "
          f"{tot['tc'] / tot['s']:.2f}; ratio (CPU) {tot['tc'] / tot['oc']:.1f}x, (wall) {tot['tw'] / tot['ow']:.1f}x; "
          f"including the person stage: {tot['tc'] / (tot['oc'] + tot['pc']):.1f}x (CPU)")
    stage.close()
    person.close()
    return 0


def bench_landmarks(args) -> int:
    """CPU and wall seconds of the default manifest's sync stage (landmarks backend) per footage second."""
    import torch
    from conftest import FOOTAGE, WEIGHTS, clip_record

    from curation.engine.config import load_manifest
    from stages.base import StageContext, cpu_seconds
    from stages.person import PersonStage
    from stages.sync import SyncStage

    torch.set_num_threads(args.threads)
    m = load_manifest()
    ctx = StageContext(weights_dir=str(WEIGHTS))
    person = PersonStage(m.params("person"), ctx)
    stage = SyncStage(m.params("sync"), ctx)
    clips = args.clips if args.clips != DEFAULT_CLIPS else DEFAULT_CLIPS + ["E1_liveportrait_d6_single_face_34s.mp4"]
    with quiet_fds():  # warm-up: model loading
        (rec,) = person.process([clip_record(FOOTAGE / clips[0], 0.0, 2.0)])
        stage.process([rec])
    tw = tc = ts = 0.0
    for name in clips:
        path = Path(name) if "/" in name else FOOTAGE / name
        with quiet_fds():
            (rec,) = person.process([clip_record(path)])
        if "face_track" not in rec.data:
            print(f"{path.name}: no face track ({rec.reason}); skipped")
            continue
        w0, c0 = time.perf_counter(), cpu_seconds()
        with quiet_fds():
            (rec,) = stage.process([rec])
        w, c = time.perf_counter() - w0, cpu_seconds() - c0
        tw, tc, ts = tw + w, tc + c, ts + rec.duration_s
        print(f"{path.name[:40]:<40} {rec.duration_s:5.1f} s | wall {w:5.1f} cpu {c:5.1f} | {rec.status} {rec.reason or ''} "
              f"offset {rec.scores.get('sync_offset')} conf {rec.scores.get('sync_conf')}")
    print(f"landmarks sync stage: {tc / max(ts, 1e-9):.2f} CPU-s and {tw / max(ts, 1e-9):.2f} wall-s per footage-s "
          f"over {ts:.1f} s (load average {os.getloadavg()[0]:.1f})")
    stage.close()
    person.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
