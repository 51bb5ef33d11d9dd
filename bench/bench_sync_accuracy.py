"""Accuracy of the sync stage's backends on the shared in-sync footage: the weights-free `landmarks` backend
(the default manifest's) and, where syncnet_v2.model is at hand, SyncNet (the talkverse manifest's).

    PYTHONPATH=. .venv/bin/python bench/bench_sync_accuracy.py [--method cca|envelope] [--set KEY=VALUE ...]
                                                               [--cache DIR] [--json OUT] [--bands]
                                                               [--syncnet PATH [--no-sha256-check]]

--syncnet PATH (syncnet_v2.model, checked against the registry's sha256 unless --no-sha256-check) scores the
same originals, shifted and swapped audio with the stage's SyncNet path (syncnet-python's crops, MFCC, offset
search and confidence, batched: curation/perception/syncnet.py; the face crops and their embeddings once per
clip) and prints the same tables for it, at the manifest's syncnet_min_conf and cross-validated. That is also
the reference the landmarks backend cannot have offline: SyncNet's offsets on the originals say whether an
in-sync clip that every weights-free estimator puts 2-3 frames off (A3, A4, A5, S08, S15) really is off.

From every in-sync clip of ../shared/footage (IN_SYNC below; FOOTAGE.md) it makes:
- the original;
- the audio delayed and advanced by 2, 5 and 10 frames at 25 fps, re-encoded with ffmpeg (adelay with silence
  baked in / atrim; never -itsoffset, whose shift is lost on decode): truth = +d / -d frames;
- swapped-audio pairs: the clip's video with every other clip's speech (truth: not in sync);
and scores each with the real sync stage: the person stage's face track, the stage's own FaceLandmarker pass
(`SyncStage.face_landmarks`, once per clip: the landmarks depend only on the video) and the stage's estimator
(`SyncStage.measure`) against each audio. The voice-over examples (VOICE_OVER) are scored as they are.

It prints, for the manifest's sync params (with --set overrides; --method envelope is the first estimator):
- offset error on originals and shifted versions: mean |error|, 90th percentile, share within +-1 frame;
- keep/reject at the manifest's thresholds, with the stage's own decision functions (landmarks_conf_verdict,
  max_abs_offset, shift_decision); should keep: originals and +-2-frame shifts; should reject: +-5, +-10 and
  swapped; precision and recall of "keep";
- the same decisions cross-validated leave-one-clip-out: the held-out clip is scored with a cca projection
  fitted on the other clips only, and judged with thresholds chosen on the other clips only: lag correction =
  median offset of their originals; min_conf = the best separating threshold of their in-sync originals
  against their swapped pairs; not_speaker = the lowest confidence of their in-sync originals that the envelope
  estimator does not vouch for (none of them would be called not_speaker), at most min_conf; shift_min_conf =
  the lowest confidence above which every kept clip of theirs lands within +-1 frame after the writer's shift
  (the offset less shift_margin_frames toward zero) and above every original of theirs that the shift would
  move by 2+ frames (the envelope vote keeps the manifest's values);
- confidence of in-sync against mismatched: best separating threshold and its error rate (all clips, and LOO);
- whether an offset error is the estimator's measure of a displacement or the clip's own zero point: the
  +-5/+-10 shifts scored against the clip's original (offset(shifted) - offset(original) against the applied
  shift), and the originals measured 2+ frames off with the envelope estimator's offset beside the cca's;
- with --bands, each original's zero point per audio band (band_zero_points);
- for in-sync originals, how far from the truth each kept clip's audio ends after the writer's shift;
- CPU seconds (this process and its ffmpeg children) per footage-second of the stage: the landmark pass, the
  audio decode, Silero VAD and one estimate. The person stage is not counted (it runs anyway).
--fit writes the cca projection fitted on every in-sync clip (the packaged avsync_projection.json).

The landmarks, the audio variants and the face tracks are cached in --cache (the landmarks under the decode
settings in their key), so a second run with other estimator settings takes seconds."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

FOOTAGE = Path(os.environ.get("CURATION_FOOTAGE", ROOT.parent / "shared" / "footage"))
WEIGHTS = Path(os.environ.get("CURATION_WEIGHTS", ROOT.parent / "shared" / "weights"))

# In sync and long enough for a +-15-frame search (FOOTAGE.md). Left out: A7 (its audio is music: Silero
# finds 0.3 % speech; whether it is in sync is not known), G01 (generated, not camera footage).
IN_SYNC = ["A1_hdtf_bob_menendez_talking_8s.mp4", "A3_retalk_man_suit_talking_6s.mp4",
           "A4_retalk_woman_glasses_talking_5s.mp4", "A5_vexpress_aoc_gt_5s.mp4",
           "E1_liveportrait_d6_single_face_34s.mp4",
           "S01_LatentSync_man-black-sweater_studio-talk_hevc_20s.mp4",
           "S03_Wav2Lip-GFPGAN_woman-blazer_blue-backdrop_1080p_7s.mp4",
           "S04_VideoReTalking_man-map-backdrop_address_5s.mp4", "S06_MimicTalk_news-anchor_German_20s.mp4",
           "S08_EDTalk_TedLieu_address_vp9_30s.webm", "S09_SadTalker-HDTF_woman-radio-address_8s.mp4",
           "S11_SadTalker-HDTF_EdMarkey_address_8s.mp4", "S12_PC-AVS-VoxCeleb2_man-interview_224px_12s.mp4",
           "S14_deep_avsr-LRS2_man-BBC_160px_11s.mp4", "S15_kannada-subgen_man-podcast_Hindi-music_8s.mp4",
           "S16_SoniTranslate_man-outdoors_phone-noisy_10s.mp4"]
VOICE_OVER = ["N01_SoniTranslate_NOTSPEAKER_man-outdoors_TTS-dub_9s.mp4"]
SHIFTS = [-10, -5, -2, 2, 5, 10]  # frames at 25 fps; + = audio delayed (lags the video)
FPS = 25.0


def short(name: str) -> str:
    return name.split("_")[0]


@contextlib.contextmanager
def cpu_meter(out: dict, key: str):
    """Adds this process's and its children's CPU seconds (user + system) to out[key]."""
    def now():
        s, c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        return s.ru_utime + s.ru_stime + c.ru_utime + c.ru_stime

    t = now()
    try:
        yield
    finally:
        out[key] = out.get(key, 0.0) + now() - t


def ffmpeg(*args: str) -> None:
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-y", *args], check=True)


def shifted_audio(src: Path, frames: int, dest: Path) -> Path:
    """src's audio delayed (frames > 0: silence baked in) or advanced (frames < 0: the start cut), re-encoded
    to 16 kHz mono PCM."""
    if not dest.exists():
        ms = abs(frames) * 1000.0 / FPS
        af = f"adelay={ms:g}:all=1" if frames > 0 else f"atrim=start={ms / 1000:g},asetpts=PTS-STARTPTS"
        ffmpeg("-i", str(src), "-vn", "-af", af, "-ac", "1", "-ar", "16000", "-c:a", "pcm_s16le", str(dest))
    return dest


def load_stages(params_update: dict):
    from curation.engine.config import load_manifest
    from stages.base import StageContext
    from stages.person import PersonStage
    from stages.probe import ProbeStage
    from stages.sync import SyncStage

    m = load_manifest()
    ctx = StageContext(weights_dir=str(WEIGHTS), fps=m.video.fps, audio_rate=m.video.audio_rate)
    sp = m.params("sync").model_copy(update=params_update)
    return (ProbeStage(m.params("probe"), ctx), PersonStage(m.params("person"), ctx), SyncStage(sp, ctx))


def prepare(names: list[str], cache: Path, probe, person, sync) -> dict:
    """Per clip: the record after the person stage, the stage's landmarks (cached) and the audio variants."""
    from curation.engine.record import ClipRecord
    from curation.media.ffmpeg import read_audio

    p = sync.params
    lm_key = f"lm_fps{sync.ctx.fps:g}_crop{p.landmarks_crop_px}_scale{p.landmarks_face_scale:g}"
    out = {}
    for name in names:
        src = FOOTAGE / name
        d = cache / short(name)
        d.mkdir(parents=True, exist_ok=True)
        (rec,) = probe.process([ClipRecord.for_source(str(src))])
        rec = rec.child(0, 1, 0.0, rec.probe["duration_s"])
        track_f = d / "face_track.json"
        if track_f.exists():
            rec.data.update(json.loads(track_f.read_text()))
        else:
            (rec,) = person.process([rec])
            if not rec.alive:
                print(f"  {short(name)}: the person stage rejects it ({rec.reason}); left out", flush=True)
                continue
            track_f.write_text(json.dumps({"face_track": rec.data["face_track"]}, default=float))
        cpu = {}
        lm_f = d / f"{lm_key}.npz"
        cpu_f = d / f"{lm_key}_cpu.json"
        if lm_f.exists():
            z = np.load(lm_f)
            lm = {"points": z["points"], "found": z["found"]}
            cpu = json.loads(cpu_f.read_text())
        else:
            with cpu_meter(cpu, "landmarks"):
                lm = sync.face_landmarks(rec)
            np.savez_compressed(lm_f, **lm)
        with cpu_meter(cpu, "audio"):
            audio = read_audio(str(src), rec.start_s, rec.end_s)
        if not (d / "audio_shift+10.npy").exists():
            for s in SHIFTS:
                np.save(d / f"audio_shift{s:+d}.npy",
                        read_audio(str(shifted_audio(src, s, d / f"audio_shift{s:+d}.wav")), rec.start_s, rec.end_s))
        vad_f = d / "vad.json"
        if vad_f.exists():
            cpu["vad"], ratio = json.loads(vad_f.read_text())
        else:
            with cpu_meter(cpu, "vad"):
                ratio = sync._get_vad().speech_ratio(audio, p.vad_threshold)
            vad_f.write_text(json.dumps([cpu["vad"], ratio]))
        cpu_f.write_text(json.dumps({"landmarks": cpu["landmarks"]}))
        variants = {0: audio}
        for s in SHIFTS:
            variants[s] = np.load(d / f"audio_shift{s:+d}.npy")
        out[short(name)] = {"rec": rec, "lm": lm, "audio": variants, "speech_ratio": ratio, "cpu": cpu,
                            "duration": rec.end_s - rec.start_s}
        print(f"  {short(name)}: {len(lm['found'])} frames, face in {lm['found'].mean():.0%}, "
              f"speech {ratio:.2f}, landmarks {cpu['landmarks']:.1f} CPU-s", flush=True)
    return out


PROJ_SETTINGS = {"n_mels": 24, "band": [100.0, 7000.0], "context": 2, "detrend_frames": 25,
                 "ridge_video": 0.1, "ridge_audio": 1.0}


def fit_projection(clips: dict, names: list[str]) -> dict:
    """The cca estimator's projection fitted on the originals of `names` (in sync: truth 0)."""
    from curation.perception import avsync

    s = PROJ_SETTINGS
    pairs = []
    for v in names:
        c = clips[v]
        audio = c["audio"][0]
        n = min(len(c["lm"]["points"]), int(len(audio) * FPS / 16000))
        vf = avsync.geometry_features(c["lm"]["points"][:n], s["detrend_frames"])
        if vf is None:
            continue
        pairs.append((vf, avsync.audio_features(audio, n, 16000, FPS, s["n_mels"], tuple(s["band"]), s["context"],
                                                s["detrend_frames"])))
    wv, wa, corr = avsync.fit_projection(pairs, s["ridge_video"], s["ridge_audio"])
    return {**s, "video": wv, "audio": wa, "canonical_corr": corr, "fitted_on": sorted(names)}


def score_all(clips: dict, sync, loo_projection: bool) -> list[dict]:
    """One row per (clip, audio variant): truth (frames, None = mismatched), offset, conf. With
    loo_projection, each clip is scored with a projection fitted on the other clips only."""
    rows = []
    names = list(clips)
    for v in names:
        c = clips[v]
        proj = fit_projection(clips, [n for n in names if n != v]) if loo_projection else None
        for s, audio in c["audio"].items():
            cpu = {}
            with cpu_meter(cpu, "t"):
                m = sync.measure(c["lm"], audio, proj)
            if s == 0:
                c["cpu"]["estimate"] = cpu["t"]
            rows.append({"clip": v, "audio": v, "kind": "original" if s == 0 else f"shift{s:+d}", "truth": s, **m})
        for a in names:
            if a == v:
                continue
            m = sync.measure(c["lm"], clips[a]["audio"][0], proj)
            rows.append({"clip": v, "audio": a, "kind": "swapped", "truth": None, **m})
    return rows


def score_all_syncnet(clips: dict, sync, fast) -> list[dict]:
    """score_all's rows for the syncnet backend: the clip's 224-px mouth crops (syncnet-python's geometry on the
    person stage's face track) and their SyncNet embeddings once per clip, every audio variant and every other
    clip's speech against them."""
    from curation.media.ffmpeg import iter_frames
    from curation.perception import syncnet as sn
    from curation.perception.tracks import boxes_at, frame_times

    vshift = sync.params.vshift
    rows = []
    feats = {}
    for v, c in clips.items():
        cpu = {}
        with cpu_meter(cpu, "video"):
            rec = c["rec"]
            rects = sn.crop_rects(boxes_at(rec.data["face_track"], frame_times(rec.start_s, rec.end_s, FPS)))
            region = sn.union_region(rects, int(rec.probe["width"]), int(rec.probe["height"]))
            frames = iter_frames(rec.source, rec.start_s, rec.end_s, fps=FPS, crop=region, pix_fmt="bgr24")
            feats[v] = fast.lip_features(sn.iter_crops(frames, region[:2], rects))
        c["cpu"]["syncnet_video"] = cpu["video"]

    def measure(v: str, audio: np.ndarray) -> dict:
        im = feats[v]
        a16 = sn.to_int16(audio)
        last = min(im.shape[0] + fast.tsize - 1, len(a16) // (16000 // int(FPS))) - 5
        if last < 1:
            return {"offset": None, "conf": None, "offset_envelope": None, "conf_envelope": None}
        res = sn.distances_to_result(im[:last], fast.audio_features(sn.mfcc(a16), last), vshift)
        return {"offset": res.offset, "conf": res.conf, "offset_envelope": None, "conf_envelope": None}

    for v, c in clips.items():
        for s, audio in c["audio"].items():
            cpu = {}
            with cpu_meter(cpu, "t"):
                m = measure(v, audio)
            if s == 0:
                c["cpu"]["syncnet_audio"] = cpu["t"]
            rows.append({"clip": v, "audio": v, "kind": "original" if s == 0 else f"shift{s:+d}", "truth": s, **m})
        for a in clips:
            if a != v:
                rows.append({"clip": v, "audio": a, "kind": "swapped", "truth": None, **measure(v, clips[a]["audio"][0])})
    return rows


def decide_syncnet(row: dict, th: dict, p) -> dict:
    """The syncnet backend's decision (stages/sync.py): low_sync_conf under min_conf, then av_offset over
    max_abs_offset; a kept clip's audio is shifted at min_conf (the stage shifts at syncnet_min_conf)."""
    from stages.sync import shift_decision

    if row["offset"] is None:
        return {"kept": False, "reason": "sync_unmeasured", "offset": None, "shift": 0}
    off = row["offset"] - th["lag"]
    reason = "low_sync_conf" if row["conf"] < th["min_conf"] else ("av_offset" if abs(off) > p.max_abs_offset else None)
    shift, _ = shift_decision(int(off), float(row["conf"]), reason is None, p.shift_audio, th["shift_conf"],
                              p.shift_margin_frames)
    return {"kept": reason is None, "reason": reason, "offset": off, "shift": shift}


# -- decisions ------------------------------------------------------------------------------------------------

def decide(row: dict, th: dict, p) -> dict:
    """The stage's decision (stages/sync.py: landmarks_conf_verdict, then max_abs_offset, then
    shift_decision) for one row under thresholds th (lag, min_conf, shift_conf, not_speaker) and the other
    params p."""
    from stages.sync import landmarks_conf_verdict, shift_decision

    if row["offset"] is None:
        return {"kept": False, "reason": "low_sync_conf", "offset": None, "shift": 0}
    q = p.model_copy(update={"landmarks_min_conf": th["min_conf"], "landmarks_not_speaker_conf": th["not_speaker"]})
    m = dict(row, offset=row["offset"] - th["lag"])
    if m.get("offset_envelope") is not None:
        m["offset_envelope"] = m["offset_envelope"] - th["lag"]
    reason = landmarks_conf_verdict(m, q)
    if reason is None and abs(m["offset"]) > p.max_abs_offset:
        reason = "av_offset"
    kept = reason is None
    shift, _ = shift_decision(int(m["offset"]), float(m["conf"]), kept, p.shift_audio, th["shift_conf"],
                              p.shift_margin_frames)
    return {"kept": kept, "reason": reason, "offset": m["offset"], "shift": shift}


def best_separation(pos: np.ndarray, neg: np.ndarray) -> tuple[float, float]:
    """Threshold t (keep conf >= t) minimising the balanced error of pos (should pass) against neg; the
    midpoint between the two scores around the best cut. Returns (t, balanced error)."""
    vals = np.unique(np.concatenate([pos, neg]))
    cands = np.concatenate([[vals[0] - 1e-6], (vals[1:] + vals[:-1]) / 2, [vals[-1] + 1e-6]])
    errs = [0.5 * np.mean(pos < t) + 0.5 * np.mean(neg >= t) for t in cands]
    i = int(np.argmin(errs))
    return float(cands[i]), float(errs[i])


def choose_thresholds(rows: list[dict], clips: list[str], max_abs: int, p) -> dict:
    """Thresholds from the rows of `clips` only (see the module docstring)."""
    tr = [r for r in rows if r["clip"] in clips and r["offset"] is not None]
    orig = [r for r in tr if r["kind"] == "original"]
    lag = int(np.median([r["offset"] for r in orig])) if orig else 0
    pos = np.array([r["conf"] for r in orig])
    neg = np.array([r["conf"] for r in tr if r["kind"] == "swapped"])
    min_conf, _ = best_separation(pos, neg)
    # not_speaker: the highest level under which none of their in-sync originals falls without the envelope's
    # vote (so it calls no real speaker of theirs not_speaker), at most min_conf
    from stages.sync import envelope_vouches

    not_speaker = min([min_conf] + [r["conf"] for r in orig if not envelope_vouches(r, p)])
    # shift: the lowest t such that every kept in-tolerance clip (originals, +-2) with conf >= t lands within a
    # frame of the truth after the writer's shift (the offset less shift_margin_frames toward zero)
    from stages.sync import margin_shift

    def applied(r):
        return margin_shift(r["offset"] - lag, p.shift_margin_frames)

    cand = [r for r in tr if r["truth"] is not None and abs(r["truth"]) <= max_abs and r["conf"] >= min_conf
            and abs(r["offset"] - lag) <= max_abs and applied(r) != 0]
    bad = [r["conf"] for r in cand if abs(applied(r) - r["truth"]) > 1]
    shift_conf = max(max(bad) + 1e-6 if bad else min_conf, min_conf)
    # and above every in-sync original that the shift would move by 2 frames or more (it would damage it)
    far = [r["conf"] for r in orig if abs(applied(r)) >= 2]
    shift_conf = max([shift_conf] + [c + 1e-6 for c in far])
    return {"lag": lag, "min_conf": min_conf, "shift_conf": shift_conf, "not_speaker": not_speaker}


def manifest_thresholds(p) -> dict:
    """The manifest's thresholds (lag correction already applied inside the stage's measure)."""
    return {"lag": 0, "min_conf": p.landmarks_min_conf, "shift_conf": p.landmarks_shift_min_conf,
            "not_speaker": p.landmarks_not_speaker_conf}


def zero_point_lines(rows: list[dict], decisions: list[dict], orig: list[int], shifted: list[int]) -> list[str]:
    """Two lines that tell an error in measuring a displacement from a clip's own zero point: the share of
    `shifted` rows whose offset less the offset of the same clip's original is within +-1 frame of the applied
    shift, and the originals measured 2+ frames off, with the envelope estimator's offset beside the cca's
    where the rows have it (a second estimator that shares only its inputs with the cca one)."""
    zero = {rows[i]["clip"]: decisions[i]["offset"] for i in orig}
    rel = [abs(decisions[i]["offset"] - zero[rows[i]["clip"]] - rows[i]["truth"]) <= 1 for i in shifted
           if decisions[i]["offset"] is not None and zero.get(rows[i]["clip"]) is not None]
    out = [f"the same, relative to the clip's own original (offset(shifted) - offset(original) against the "
           f"applied shift): {100 * np.mean(rel):.1f}%" if rel else "the same, relative to the original: n/a"]
    off = [i for i in orig if decisions[i]["offset"] is not None and abs(decisions[i]["offset"]) >= 2]

    def env(i):
        o = rows[i].get("offset_envelope")
        return "" if "offset_envelope" not in rows[i] else f" (envelope {'-' if o is None else f'{o:+d}'})"

    out.append("originals measured 2+ frames off: " + (", ".join(
        f"{rows[i]['clip']} {decisions[i]['offset']:+d}{env(i)}" for i in off) or "none"))
    return out


BANDS_HZ = ((80, 300), (300, 1000), (1000, 2500), (2500, 5000), (5000, 7900))


def band_zero_points(clips: dict, max_lag: int = 15) -> list[str]:
    """The envelope estimator's peak lag on each original, per audio band (BANDS_HZ), interpolated below a frame
    (a parabola through the peak and its neighbours), with the peak correlation. An offset in the file moves every
    band alike; a speaker whose lips lead some sounds more than others moves the bands apart."""
    from curation.perception.lipsignal import fill_gaps, lagged_ncc, mouth_opening, speech_envelope

    out = ["zero point per audio band, originals (envelope estimator; frames, peak correlation): "
           + "  ".join(f"{lo}-{hi} Hz" for lo, hi in BANDS_HZ)]
    for v, c in clips.items():
        audio = c["audio"][0]
        n = min(len(c["lm"]["points"]), int(len(audio) * FPS / 16000))
        gap = fill_gaps(mouth_opening(c["lm"]["points"][:n]))
        cells = []
        for band in BANDS_HZ:
            cv = lagged_ncc(gap, speech_envelope(audio, n, 16000, FPS, band), max_lag)
            i = int(np.argmax(cv))
            d = 0.0
            if 0 < i < len(cv) - 1 and cv[i - 1] - 2 * cv[i] + cv[i + 1] < 0:
                d = 0.5 * (cv[i - 1] - cv[i + 1]) / (cv[i - 1] - 2 * cv[i] + cv[i + 1])
            cells.append(f"{i - max_lag + d:+5.1f} ({cv[i]:.2f})")
        out.append(f"  {v:>4}  " + "  ".join(cells))
    return out


def summarise(rows: list[dict], decisions: list[dict], title: str) -> list[str]:
    out = [f"--- {title}"]
    def pct(x):
        return f"{100 * np.mean(x):5.1f}%" if len(x) else "   n/a"

    out.append(f"{'variant':>10} {'n':>4} {'mean|err|':>9} {'p90|err|':>8} {'within1':>7} {'kept':>6} {'rejected':>8}"
               f" {'audio within1 after write (kept)':>32}")
    kinds = ["original", "shift-2", "shift+2", "shift-5", "shift+5", "shift-10", "shift+10", "swapped"]
    for k in kinds:
        idx = [i for i, r in enumerate(rows) if r["kind"] == k]
        if not idx:
            continue
        kept = np.array([decisions[i]["kept"] for i in idx])
        if k == "swapped":
            out.append(f"{k:>10} {len(idx):>4} {'':>9} {'':>8} {'':>7} {pct(kept)} {pct(~kept)}")
            continue
        err = np.array([abs(decisions[i]["offset"] - rows[i]["truth"]) if decisions[i]["offset"] is not None
                        else 99 for i in idx], float)
        after = np.array([abs(rows[i]["truth"] - decisions[i]["shift"]) for i in idx if decisions[i]["kept"]], float)
        out.append(f"{k:>10} {len(idx):>4} {err.mean():9.2f} {np.percentile(err, 90):8.1f} {pct(err <= 1)} "
                   f"{pct(kept)} {pct(~kept)}  {pct(after <= 1) if len(after) else 'n/a':>8} (max {after.max() if len(after) else 0:.0f} fr)")
    should = np.array([r["kind"] in ("original", "shift-2", "shift+2") for r in rows])
    kept = np.array([d["kept"] for d in decisions])
    tp = (kept & should).sum()
    prec = tp / max(kept.sum(), 1)
    rec = tp / max(should.sum(), 1)
    out.append(f"keep precision {prec:.3f} recall {rec:.3f} (should keep: originals and +-2; should reject: "
               f"+-5, +-10, swapped)")
    shift5 = [i for i, r in enumerate(rows) if r["kind"] in ("shift-5", "shift+5", "shift-10", "shift+10")]
    w5 = np.mean([decisions[i]["offset"] is not None and abs(decisions[i]["offset"] - rows[i]["truth"]) <= 1
                  for i in shift5])
    out.append(f"offset within +-1 on +-5/+-10 shifts: {100 * w5:.1f}%")
    orig = [i for i, r in enumerate(rows) if r["kind"] == "original"]
    out += zero_point_lines(rows, decisions, orig, shift5)
    ends = [(rows[i]["clip"], decisions[i]["shift"]) for i in orig if decisions[i]["kept"]]
    out.append("in-sync originals kept, audio error after the writer (frames): "
               + " ".join(f"{c}:{abs(s)}" for c, s in ends)
               + f"  -> worst {max([abs(s) for _, s in ends], default=0)}")
    rej = [(rows[i]["clip"], decisions[i]["reason"], rows[i]["offset"], rows[i]["conf"]) for i in orig
           if not decisions[i]["kept"]]
    out.append("in-sync originals rejected: " + (", ".join(
        f"{c} {why} (offset {o}, conf {'-' if cf is None else f'{cf:.2f}'})" for c, why, o, cf in rej) or "none"))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--method", choices=["cca", "envelope"], default=None)
    ap.add_argument("--set", nargs="*", default=[], help="sync params KEY=VALUE (yaml values)")
    ap.add_argument("--cache", default="/tmp/talkcurate_sync_bench")
    ap.add_argument("--clips", nargs="*", default=None, help="subset of IN_SYNC (short names: A1 S01 ...)")
    ap.add_argument("--json", default=None, help="write every row and the summary here")
    ap.add_argument("--fit", default=None, help="cca: fit the projection on every in-sync clip and write it here "
                                                 "(curation/perception/avsync_projection.json is the packaged one)")
    ap.add_argument("--bands", action="store_true",
                    help="also print each original's zero point per audio band (an offset in the file moves every "
                         "band alike; a speaker's lip lead moves them apart)")
    ap.add_argument("--syncnet", default=None, metavar="PATH",
                    help="syncnet_v2.model: also benchmark the syncnet backend (module docstring)")
    ap.add_argument("--no-sha256-check", action="store_true",
                    help="--syncnet: do not check the file against the registry's sha256 (weights made for a test)")
    args = ap.parse_args()

    import yaml

    upd = {k: yaml.safe_load(v) for k, v in (s.split("=", 1) for s in args.set)}
    if args.method:
        upd["landmarks_method"] = args.method
    probe, person, sync = load_stages(upd)
    p = sync.params
    names = [n for n in IN_SYNC if args.clips is None or short(n) in args.clips]
    print(f"sync accuracy: backend landmarks, method {p.landmarks_method}; syncnet: "
          + (f"{args.syncnet}" if args.syncnet else "not benchmarked (no --syncnet PATH: syncnet_v2.model is not "
                                                    "available offline)"), flush=True)
    cache = Path(args.cache)
    t0 = time.time()
    clips = prepare(names, cache, probe, person, sync)
    vo = prepare(VOICE_OVER, cache, probe, person, sync)
    cca = p.landmarks_method == "cca"
    if cca and args.fit:
        proj = fit_projection(clips, list(clips))
        out = {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in proj.items()}
        out["made_by"] = "bench/bench_sync_accuracy.py --fit (first canonical pair of lip/jaw geometry and log-mel context)"
        Path(args.fit).write_text(json.dumps(out, indent=1) + "\n")
        print(f"projection written to {args.fit} (canonical correlation {proj['canonical_corr']:.3f})", flush=True)
    rows = score_all(clips, sync, loo_projection=cca)
    max_abs = p.max_abs_offset

    lines = [f"method {p.landmarks_method}; {len(clips)} in-sync clips: {' '.join(clips)}; "
             f"variants: original, shifts {SHIFTS} frames, {len(clips) * (len(clips) - 1)} swapped pairs"]
    th_m = manifest_thresholds(p)
    lines += summarise(rows, [decide(r, th_m, p) for r in rows],
                       f"manifest thresholds {th_m} (max_abs_offset {max_abs}"
                       + (f"; envelope vote >= {p.landmarks_envelope_min_conf} within {p.landmarks_vote_frames} frames)"
                          if cca else ")"))
    # leave-one-clip-out
    loo_dec, loo_th = [None] * len(rows), {}
    for v in clips:
        th = choose_thresholds(rows, [c for c in clips if c != v], max_abs, p)
        loo_th[v] = th
        for i, r in enumerate(rows):
            if r["clip"] == v:
                loo_dec[i] = decide(r, th, p)
    lines += summarise(rows, loo_dec, "leave-one-clip-out thresholds (cca: and projection); envelope vote as in "
                                      "the manifest")
    for k in ("lag", "min_conf", "shift_conf", "not_speaker"):
        vals = [t[k] for t in loo_th.values()]
        lines.append(f"  LOO {k}: {min(vals):.3g} .. {max(vals):.3g}")
    th_all = choose_thresholds(rows, list(clips), max_abs, p)
    lines.append(f"thresholds chosen on all clips: " + ", ".join(f"{k} {v:.3g}" for k, v in th_all.items()))
    pos = np.array([r["conf"] for r in rows if r["kind"] == "original" and r["conf"] is not None])
    neg = np.array([r["conf"] for r in rows if r["kind"] == "swapped" and r["conf"] is not None])
    t, e = best_separation(pos, neg)
    lines.append(f"confidence in sync (originals) {np.min(pos):.2f}..{np.median(pos):.2f}..{np.max(pos):.2f} | "
                 f"swapped {np.min(neg):.2f}..{np.median(neg):.2f}..{np.max(neg):.2f} (min..median..max); "
                 f"best separating threshold {t:.3f}, balanced error {100 * e:.1f}% (in-sample)")
    loo_err = []
    for v in clips:
        tv, _ = best_separation(np.array([r["conf"] for r in rows if r["kind"] == "original" and r["clip"] != v]),
                                np.array([r["conf"] for r in rows if r["kind"] == "swapped" and r["clip"] != v]))
        loo_err += [r["conf"] < tv for r in rows if r["clip"] == v and r["kind"] == "original"]
        loo_err += [r["conf"] >= tv for r in rows if r["clip"] == v and r["kind"] == "swapped"]
    lines.append(f"  LOO error of that threshold: originals rejected + swapped passed = {sum(loo_err)} of {len(loo_err)}")
    lines.append("per clip (original): " + " ".join(
        f"{r['clip']}:{r['offset']}/{'-' if r['conf'] is None else round(r['conf'], 2)}" for r in rows if r["kind"] == "original"))
    if args.bands:
        lines += band_zero_points(clips)
    for v, c in vo.items():
        m = sync.measure(c["lm"], c["audio"][0])
        dm, dl = decide(m, th_m, p), decide(m, th_all, p)
        lines.append(f"voice-over {v}: offset {m['offset']}, conf {m['conf'] if m['conf'] is None else round(m['conf'], 3)}"
                     f" (envelope {m['offset_envelope']}, {m['conf_envelope'] if m['conf_envelope'] is None else round(m['conf_envelope'], 3)})"
                     f" -> manifest: {dm['reason'] or 'kept'}; all-clip thresholds: {dl['reason'] or 'kept'}")
    cpu = sum(c["cpu"].get("landmarks", 0) + c["cpu"].get("audio", 0) + c["cpu"].get("vad", 0)
              + c["cpu"].get("estimate", 0) for c in clips.values())
    dur = sum(c["duration"] for c in clips.values())
    est = sum(c["cpu"].get("estimate", 0) for c in clips.values())
    lines.append(f"CPU: {cpu:.1f} CPU-s for {dur:.1f} s of footage = {cpu / dur:.3f} CPU-s per footage-second "
                 f"(landmarks {sum(c['cpu'].get('landmarks', 0) for c in clips.values()) / dur:.3f}, estimate "
                 f"{est / dur:.3f}; landmark CPU from the run that filled the cache; 2 shared cores: noisy)")
    if args.syncnet:
        lines += syncnet_tables(clips, vo, sync, args)
    lines.append(f"bench wall time {time.time() - t0:.0f} s")
    print("\n".join(lines), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "summary": lines}, default=float, indent=1))
    sync.close()
    person.close()


def syncnet_tables(clips: dict, vo: dict, sync, args) -> list[str]:
    """The landmarks tables again for the syncnet backend: manifest threshold (syncnet_min_conf) and
    leave-one-clip-out thresholds, separation, per-clip offsets, the voice-over clips and the CPU cost."""
    import torch

    from curation.perception.syncnet import FastSyncNet, load_syncnet

    p = sync.params
    torch.set_num_threads(max(1, p.threads))
    net = load_syncnet(args.syncnet, None if args.no_sha256_check else p.syncnet_sha256)
    fast = FastSyncNet(net, "cuda" if torch.cuda.is_available() else "cpu", p.syncnet_batch_windows)
    both = {**clips, **vo}
    rows_all = score_all_syncnet(both, sync, fast)
    rows = [r for r in rows_all if r["clip"] in clips and r["audio"] in clips]
    lines = [f"=== backend syncnet ({args.syncnet}; device {fast.device})"]
    th_m = {"lag": 0, "min_conf": p.syncnet_min_conf, "shift_conf": p.syncnet_min_conf, "not_speaker": 0.0}
    lines += summarise(rows, [decide_syncnet(r, th_m, p) for r in rows], f"manifest threshold syncnet_min_conf "
                       f"{p.syncnet_min_conf} (max_abs_offset {p.max_abs_offset})")
    loo = [None] * len(rows)
    for v in clips:
        others = [r for r in rows if r["clip"] != v and r["offset"] is not None]
        orig = [r for r in others if r["kind"] == "original"]
        t, _ = best_separation(np.array([r["conf"] for r in orig]),
                               np.array([r["conf"] for r in others if r["kind"] == "swapped"]))
        th = {"lag": int(np.median([r["offset"] for r in orig])) if orig else 0, "min_conf": t, "shift_conf": t,
              "not_speaker": 0.0}
        for i, r in enumerate(rows):
            if r["clip"] == v:
                loo[i] = decide_syncnet(r, th, p)
    lines += summarise(rows, loo, "leave-one-clip-out: lag = median offset of the other originals, min_conf = "
                                  "their best separation from their swapped pairs")
    lines.append("per clip (original): " + " ".join(
        f"{r['clip']}:{r['offset']}/{'-' if r['conf'] is None else round(r['conf'], 2)}" for r in rows
        if r["kind"] == "original"))
    for r in rows_all:
        if r["clip"] in vo and r["kind"] == "original":
            d = decide_syncnet(r, th_m, p)
            lines.append(f"voice-over {r['clip']}: offset {r['offset']}, conf "
                         f"{'-' if r['conf'] is None else round(r['conf'], 3)} -> manifest: {d['reason'] or 'kept'}")
    cpu = sum(c["cpu"].get("syncnet_video", 0) + c["cpu"].get("syncnet_audio", 0) + c["cpu"].get("audio", 0)
              + c["cpu"].get("vad", 0) for c in clips.values())
    dur = sum(c["duration"] for c in clips.values())
    lines.append(f"syncnet CPU: {cpu:.1f} CPU-s for {dur:.1f} s of footage = {cpu / dur:.3f} CPU-s per footage-second "
                 f"(crops + embeddings, one audio, VAD; on {fast.device})")
    return lines


if __name__ == "__main__":
    main()
