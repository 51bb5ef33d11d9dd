"""Single person: sample a few frames per second of each clip at a reduced size, detect faces (YuNet or SCRFD)
and bodies (MediaPipe PoseLandmarker, several poses), link faces into tracks by IoU and decide from the whole
clip that exactly one person talks to the camera.

Scores (audit columns) and reasons, checked in this order (the first failing one is the clip's reason):
    face_any_frac   share of sampled frames with any face                         -> no_face
    multi_frac      share of sampled frames with a second face or body at least
                    `other_size_ratio` the size of the main one                    -> multi_person
    face_px, face_height_frac   median main-face height (pixels, share of frame)   -> face_too_small
    face_presence   share of sampled frames where the main face track has a box   -> face_unstable
    face_jitter     median centre move between consecutive samples / face height  -> face_unstable
Also recorded: other_face_frac, other_body_frac, n_faces_max, n_bodies_max, person_samples.

Hands to later stages (`rec.data`): `face_track` (curation.perception.tracks contract: sampled-frame times in the source
timeline and the main face box per sampled frame, display pixels; `face_track_at(rec, fps)` interpolates) and
`person_box` (union of the main face and of the body matched to it over the clip, clipped to the frame)."""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import Field

from curation import geometry as geo_
from curation.media.frames import geometry, iter_samples
from curation.perception.linking import Track, link, main_track
from curation.engine.record import ClipRecord
from curation.perception.tracks import boxes_at, frame_times
from stages.base import Check, Params, Stage


class PersonParams(Params):
    sample_fps: float = Field(3.0, gt=0, le=30, description="sampled frames per second of clip")
    max_samples: int = Field(150, ge=1, description="cap on sampled frames per clip (50 s at 3 fps)")
    decode_max_side: int = Field(640, ge=64, description="frames are decoded with the longer side at most this")
    decoder: Literal["decord", "ffmpeg"] = "decord"
    threads: int = Field(1, ge=0, description="decoder / detector threads per actor (0 = library default)")
    face_backend: Literal["yunet", "scrfd"] = "yunet"
    scrfd_model: Literal["scrfd_500m", "scrfd_2.5g"] = "scrfd_500m"
    scrfd_input: int | None = Field(None, ge=64, description="SCRFD square input side; None = each frame's own size "
                                    "(rounded up to 32, no resampling): a fixed 640 misses A1's close-up face")
    face_score: float = Field(0.6, gt=0, lt=1, description="face detector confidence threshold")
    body_check: bool = Field(True, description="count bodies with PoseLandmarker too")
    body_every: int = Field(1, ge=1, description="run PoseLandmarker on every k-th sampled frame (it costs 3x the face detector)")
    num_poses: int = Field(4, ge=2, description="PoseLandmarker num_poses (> 1 to see a second person)")
    pose_score: float = Field(0.5, gt=0, lt=1, description="PoseLandmarker detection/presence confidence")
    body_min_landmarks: int = Field(8, ge=1, description="a body needs this many visible landmarks to count")
    track_iou: float = Field(0.3, gt=0, lt=1, description="IoU linking a face to the track of the previous samples")
    track_max_gap: int = Field(2, ge=0, description="samples a track may miss and still be continued")
    same_face_iou: float = Field(0.2, ge=0, le=1, description="a face box overlapping the main face's place by more "
                                 "than this IoU is the main face itself (a duplicate), never a second person")
    body_match_expand: float = Field(0.5, ge=0, description="a body whose head lies in the main face box grown by "
                                     "this share of its size on each side is the main person's body")
    body_per_face: float = Field(2.0, gt=0, description="without a body of its own, the main person's reference "
                                 "size is this many face heights (head and shoulders, what a close-up shows)")
    # -- decision thresholds --
    min_face_frac: float = Field(0.5, ge=0, le=1, description="no_face below this share of frames with a face")
    other_size_ratio: float = Field(0.5, gt=0, description="a second face/body counts from this size ratio to the main one")
    max_multi_frac: float = Field(0.2, ge=0, le=1, description="multi_person above this share of frames with a second person")
    min_face_px: float = Field(48.0, ge=0, description="face_too_small below this median face height (display px)")
    min_face_height_frac: float = Field(0.1, ge=0, le=1, description="face_too_small below this face height / frame height")
    min_face_presence: float = Field(0.8, ge=0, le=1, description="face_unstable below this share of frames on the main track")
    max_face_jitter: float = Field(0.5, ge=0, description="face_unstable above this median centre move per sample (face heights)")

    checks = (
        Check("face_any_frac", "min_face_frac", "min", "no_face", "too few sampled frames show a face"),
        Check("multi_frac", "max_multi_frac", "max", "multi_person", "a second face or body, big enough, too often"),
        Check("face_px", "min_face_px", "min", "face_too_small", "the main face is too small in pixels"),
        Check("face_height_frac", "min_face_height_frac", "min", "face_too_small",
              "the main face is too small a share of the frame"),
        Check("face_presence", "min_face_presence", "min", "face_unstable", "the main face track has too many gaps"),
        Check("face_jitter", "max_face_jitter", "max", "face_unstable", "the main face moves too much between samples"),
    )


def face_track_at(rec: ClipRecord, fps: float) -> np.ndarray:
    """The main face box at every frame of the clip resampled to `fps` ((N, 4), display pixels)."""
    return boxes_at(rec.data["face_track"], frame_times(rec.start_s, rec.end_s, fps))


def decide(times: list[float], faces: list[np.ndarray], bodies: list[list | None], width: int, height: int,
           p: PersonParams) -> dict:
    """The whole-clip decision from per-sample detections in display pixels.
    faces[i]: (N, 5) [x0, y0, x1, y1, score]; bodies[i]: list of curation.perception.bodies.Body, or None where the
    body detector did not run on that sample (body_every > 1, body_check off).
    Returns {"scores": {...}, "track": Track | None, "person_box": [...] | None}."""
    n = len(times)
    tracks = link(faces, p.track_iou, p.track_max_gap)
    main: Track | None = main_track(tracks)
    sc: dict[str, float | None] = {
        "person_samples": float(n),
        "face_any_frac": float(np.mean([len(f) > 0 for f in faces])) if n else 0.0,
        "n_faces_max": float(max((len(f) for f in faces), default=0)),
        "n_bodies_max": float(max((len(b) for b in bodies if b is not None), default=0)),
    }
    if main is None:
        return {"scores": sc, "track": None, "person_box": None}

    heights = main.heights()
    med_h = float(np.median(heights))
    main_boxes = boxes_at({"t": [times[i] for i in main.frames], "boxes": main.boxes}, times)
    other_face = np.zeros(n, bool)
    other_body = np.zeros(n, bool)
    body_seen = np.array([b is not None for b in bodies], bool)
    union = [list(b) for b in main.boxes]
    for i in range(n):
        own = main.box_at(i)
        ref_face = (own[3] - own[1]) if own is not None else med_h
        for f in faces[i]:
            # Another person's face lies elsewhere: a box on the main face's (interpolated) place is the main
            # face itself (a duplicate or a track that broke for a sample), never a second person.
            if geo_.contains(main_boxes[i], geo_.center(f)) or geo_.iou(f[:4], main_boxes[i]) > p.same_face_iou:
                continue
            if (f[3] - f[1]) >= p.other_size_ratio * ref_face:
                other_face[i] = True
        # Bodies: the one whose head lies on the main face is the main person; any other big one is not.
        match_box = geo_.expand(main_boxes[i], p.body_match_expand)
        bl = bodies[i] or []
        mine = [b for b in bl if geo_.contains(match_box, b.head)]
        others = [b for b in bl if not any(b is m for m in mine) and b.n_visible >= p.body_min_landmarks]
        for b in mine:
            union.append(list(b.box))
        # Reference size of the main person: its body if seen, else `body_per_face` face heights.
        ref_body = max((b.box[3] - b.box[1] for b in mine), default=p.body_per_face * ref_face)
        if any((b.box[3] - b.box[1]) >= p.other_size_ratio * ref_body for b in others):
            other_body[i] = True

    centres = np.array([[(b[0] + b[2]) / 2, (b[1] + b[3]) / 2] for b in main.boxes])
    steps = np.diff(np.asarray(main.frames))
    jit = np.linalg.norm(np.diff(centres, axis=0), axis=1) / np.maximum(steps, 1) / max(med_h, 1.0)
    person_box = geo_.clip(geo_.union(union), width, height)
    sc.update({
        "face_presence": len(main.frames) / n,
        "other_face_frac": float(other_face.mean()),
        # body shares over the samples the body detector ran on; multi_frac: the larger of the face-only share
        # (all samples) and the face-or-body share (samples with bodies)
        "other_body_frac": float(other_body[body_seen].mean()) if body_seen.any() else None,  # not measured
        "multi_frac": float(max(other_face.mean(),
                                (other_face | other_body)[body_seen].mean() if body_seen.any() else 0.0)),
        "face_px": med_h,
        "face_height_frac": med_h / height,
        "face_jitter": float(np.median(jit)) if len(jit) else 0.0,
    })
    return {"scores": sc, "track": main, "person_box": person_box}


class PersonStage(Stage):
    """One main face, big enough and steady, and no second person. Reasons: no_face, multi_person,
    face_too_small, face_unstable. Writes rec.data['face_track'] and rec.data['person_box']."""

    name = "person"
    Params = PersonParams
    params: PersonParams
    uses_models = True
    records = {"person_samples": "frames sampled", "n_faces_max": "most faces on one sampled frame",
               "n_bodies_max": "most bodies on one sampled frame",
               "other_face_frac": "share of samples with a second face at least other_size_ratio the main one",
               "other_body_frac": "share of body-checked samples with a second body at least other_size_ratio"}

    def __init__(self, params: PersonParams, ctx):
        super().__init__(params, ctx)
        self._faces = None
        self._bodies = None

    @classmethod
    def required_weights(cls, params: PersonParams) -> list[str]:
        names = ["yunet" if params.face_backend == "yunet" else params.scrfd_model]
        if params.body_check:
            names.append("pose_landmarker")
        return names

    def setup(self) -> None:
        from curation.perception.faces import make_face_detector

        p = self.params
        self._faces = make_face_detector(p.face_backend, self.weight(self.required_weights(p)[0]), p.face_score,
                                         threads=p.threads, scrfd_input=p.scrfd_input, use_gpu=self.ctx.use_gpu)
        if p.body_check:
            from curation.perception.bodies import PoseBodies

            self._bodies = PoseBodies(self.weight("pose_landmarker"), num_poses=p.num_poses,
                                      min_detection=p.pose_score, min_presence=p.pose_score)

    def detect(self, rec: ClipRecord) -> tuple[list[float], list[np.ndarray], list[list | None], int, int]:
        """Sampled times and detections in display pixels."""
        self.ensure_setup()
        p = self.params
        geo = geometry(rec.probe, max_side=p.decode_max_side)
        sx, sy = geo.scale_x, geo.scale_y
        times, faces, bodies = [], [], []
        for t, rgb in iter_samples(rec.source, rec.start_s, rec.end_s, p.sample_fps, geo,
                                   rotation=int(rec.probe.get("rotation") or 0), threads=p.threads,
                                   max_samples=p.max_samples, backend=p.decoder, timeout=self.ctx.timeout_s):
            f = self._faces.detect(np.ascontiguousarray(rgb[:, :, ::-1]))
            f = f.astype(np.float64)
            f[:, [0, 2]] *= sx
            f[:, [1, 3]] *= sy
            times.append(t)
            faces.append(f)
            bl = None  # body detector not run on this sample
            if self._bodies is not None and (len(times) - 1) % p.body_every == 0:
                bl = []
                for b in self._bodies.detect(rgb):
                    b.box = (b.box[0] * sx, b.box[1] * sy, b.box[2] * sx, b.box[3] * sy)
                    b.head = (b.head[0] * sx, b.head[1] * sy)
                    bl.append(b)
            bodies.append(bl)
        return times, faces, bodies, geo.width, geo.height

    def process_one(self, rec: ClipRecord) -> ClipRecord:
        p = self.params
        times, faces, bodies, w, h = self.detect(rec)
        if not times:
            self.reject(rec, "unreadable", "no frame could be decoded for the person stage")
            return rec
        res = decide(times, faces, bodies, w, h, p)
        sc, main = res["scores"], res["track"]
        for k in ("person_samples", "n_faces_max", "n_bodies_max"):
            self.record(rec, k, sc[k])
        self.check(rec, "face_any_frac", sc["face_any_frac"])
        if main is None:
            return rec
        box = {i: b for i, b in zip(main.frames, main.boxes)}
        rec.data["face_track"] = {
            "t": [float(t) for t in times],
            "boxes": [[round(v, 1) for v in box[i]] if i in box else None for i in range(len(times))],
            "frame_size": [w, h],
            "backend": p.face_backend,
        }
        rec.data["person_box"] = [round(v, 1) for v in res["person_box"]]
        self.record(rec, "other_face_frac", sc["other_face_frac"])
        self.record(rec, "other_body_frac", sc["other_body_frac"])
        for score in ("multi_frac", "face_px", "face_height_frac", "face_presence", "face_jitter"):
            self.check(rec, score, sc[score])
        return rec

    def close(self) -> None:
        if self._bodies is not None:
            self._bodies.close()
        self._faces = self._bodies = None
        self._set_up = False
