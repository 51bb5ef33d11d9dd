"""Shared fixtures: the real footage and weights in ../shared, and stage contexts for tests without Ray."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("CURATION_SHARED", ROOT.parent / "shared"))
FOOTAGE = Path(os.environ.get("CURATION_FOOTAGE", SHARED / "footage"))
WEIGHTS = Path(os.environ.get("CURATION_WEIGHTS", SHARED / "weights"))


@pytest.fixture(scope="session")
def footage() -> Path:
    if not FOOTAGE.is_dir():
        pytest.fail(f"shared footage not found at {FOOTAGE} (set CURATION_FOOTAGE)")
    return FOOTAGE


@pytest.fixture(scope="session")
def weights_dir() -> Path:
    if not WEIGHTS.is_dir():
        pytest.fail(f"shared weights not found at {WEIGHTS} (set CURATION_WEIGHTS)")
    return WEIGHTS


@pytest.fixture(scope="module")
def torch_one_thread():
    """One torch intra-op thread for a test module (two shared cores: no oversubscription with ffmpeg or the
    DataLoader's workers; modules opt in with `pytestmark = pytest.mark.usefixtures("torch_one_thread")`)."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def stage_ctx(weights_dir):
    """A StageContext as the pipeline builds it from the default manifest."""
    from stages.base import StageContext

    def make(**kw):
        base = dict(weights_dir=str(weights_dir), fps=25.0, audio_rate=16000, score_only=False, timeout_s=600.0,
                    video={"crf": 20, "preset": "veryfast"})
        base.update(kw)
        return StageContext(**base)

    return make


def ffmpeg(*args: str) -> None:
    """Run ffmpeg with an argument list (never a shell); raise with its stderr on failure."""
    p = subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-y", *args], capture_output=True)
    if p.returncode != 0:
        raise RuntimeError(p.stderr.decode(errors="replace"))


def source_record(path: Path | str, audio_path: str | None = None):
    """A probed source record (probe stage run for real) for stage tests without Ray."""
    from curation.engine.config import load_manifest
    from curation.engine.record import ClipRecord
    from stages.base import StageContext
    from stages.probe import ProbeStage

    m = load_manifest()
    ctx = StageContext(weights_dir=str(WEIGHTS))
    rec = ClipRecord.for_source(str(path), audio_path)
    (rec,) = ProbeStage(m.params("probe"), ctx).process([rec])
    return rec


def clip_record(path: Path | str, start_s: float = 0.0, end_s: float | None = None, audio_path: str | None = None):
    """A candidate clip record spanning [start_s, end_s) of a probed source (the scenes stage's output shape)."""
    src = source_record(path, audio_path)
    end = src.probe["duration_s"] if end_s is None else end_s
    return src.child(0, 1, start_s, end)


assert shutil.which("ffmpeg"), "ffmpeg must be installed (make test installs it)"


# ---------------------------------------------------------------------------------------------------
# One real pipeline run (real ffmpeg, real local Ray, real models) shared by every test that checks its
# output. The input mixes shared footage with bad files made here.

PIPELINE_FOOTAGE = [
    "A1_hdtf_bob_menendez_talking_8s.mp4",       # keep
    "A4_retalk_woman_glasses_talking_5s.mp4",    # too_short
    "B1_visualvoice_interview_two_people_18s.mp4",  # multi_person
    "C1_documentary_6shots_anamorphic_25s.mp4",  # 6 shots
    "D1_noface_cup_hand_quiet_audio_8s.mp4",     # no_face
    "D5_lowq_carphone_176x144_pristine_4s.mp4",  # no_audio
    "D9_silent_audio_track_face_5s.mp4",         # no_speech
    "E1_liveportrait_d6_single_face_34s.mp4",    # keep
]


def make_bad_inputs(d: Path, footage: Path) -> dict[str, str]:
    """Bad files in `d`; returns {file name: the probe reason it must get}."""
    a1 = (footage / "A1_hdtf_bob_menendez_talking_8s.mp4").read_bytes()
    (d / "empty.mp4").write_bytes(b"")
    (d / "random_bytes.mp4").write_bytes(os.urandom(200_000))
    (d / "text_named.mp4").write_text("this is not a video\n" * 100)
    (d / "truncated.mp4").write_bytes(a1[: len(a1) // 3])
    ffmpeg("-i", str(footage / "F3_hdtf_rd_radio31_8s.wav"), "-c:a", "aac", str(d / "audio_only.mp4"))
    shutil.copy(footage / "A4_retalk_woman_glasses_talking_5s.mp4", d / "A4 copy 'quoted' \"dq\" ü.mp4")
    return {"empty.mp4": "unreadable", "random_bytes.mp4": "unreadable", "text_named.mp4": "unreadable",
            "truncated.mp4": "unreadable", "audio_only.mp4": "no_video", "A4 copy 'quoted' \"dq\" ü.mp4": "too_short"}


@pytest.fixture(scope="session")
def pipeline_input(tmp_path_factory, footage) -> tuple[Path, dict[str, str]]:
    d = tmp_path_factory.mktemp("input")
    for name in PIPELINE_FOOTAGE:
        os.symlink(footage / name, d / name)
    bad = make_bad_inputs(d, footage)
    return d, bad


def run_cli(*args: str, check: bool = True, timeout: float = 1800) -> subprocess.CompletedProcess:
    env = dict(os.environ, CURATION_WEIGHTS=str(WEIGHTS), RAY_DEDUP_LOGS="0")
    env.pop("RAY_ADDRESS", None)
    p = subprocess.run([str(ROOT / ".venv" / "bin" / "curation") if (ROOT / ".venv").exists() else "curation", *args],
                       capture_output=True, text=True, env=env, timeout=timeout)
    if check and p.returncode != 0:
        raise AssertionError(f"curation {' '.join(args)} exited {p.returncode}\n{p.stdout[-4000:]}\n{p.stderr[-6000:]}")
    return p


@pytest.fixture(scope="session")
def pipeline_output(tmp_path_factory, pipeline_input) -> Path:
    """The output directory of one `curation run` over pipeline_input with the default manifest."""
    out = tmp_path_factory.mktemp("run") / "out"
    p = run_cli("run", "--input", str(pipeline_input[0]), "--output", str(out), "--num-cpus", "2")
    (out / "run.log").write_text(p.stdout + "\n" + p.stderr)
    return out


# ---------------------------------------------------------------------------------------------------
# Test tiers. `make test-fast` (pytest -m "not slow"): stage logic, formats, config, the report and the
# fault machinery on small inputs, no Ray, no pipeline run, no model over a whole clip: under 2 minutes on
# 2 cores. Every test not listed here is marked `slow` (a new test is slow until it is listed); `make test`
# runs everything, as CI does.

FAST = {
    "test_decl.py": {"test_every_stage_declares_checks_on_its_own_params", "test_thresholds_table_is_the_manifest",
                     "test_check_rejects_with_the_declared_reason_and_notes_it_in_score_only",
                     "test_hard_check_applies_in_score_only_and_max_abs_and_null",
                     "test_probe_too_small_is_a_hard_rejection_in_score_only",
                     "test_talkverse_is_default_plus_its_sync_section",
                     "test_extends_merges_by_stage_and_names_the_file_on_errors", "test_geometry",
                     "test_report_takes_thresholds_and_stages_from_thresholds_json"},
    "test_person.py": {"test_link_follows_a_moving_face_and_splits_two_people", "test_decide_counts_a_body_without_a_face",
                       "test_missing_weights_fail_at_startup"},
    "test_quality.py": {"test_startup_checks"},
    "test_sync_view.py": {"test_lip_gap_ibug_and_audio_shift"},
    "test_sync.py": {"test_shift_decision_stops_a_margin_short"},
    "test_skeleton.py": {"test_body_feet_hand_tables_match_mediapipe_names", "test_face_table_regions_are_mediapipe_regions",
                         "test_pose_npz_encoding_and_talkverse_face_boxes", "test_summary_columns",
                         "test_dwpose_without_weights_fails_at_start_up"},
    "test_stages_backbone.py": {"test_shots_from_cuts_trims_and_splits", "test_probe_reasons_for_generated_files"},
    "test_cluster.py": {"test_cluster_launcher_config_is_valid", "test_gpu_requests_fitted_to_the_cluster",
                        "test_a_pool_starts_with_one_actor_on_each_node"},
    "test_export.py": {"test_export_refuses_what_has_no_clips"},
    "test_model.py": {"test_checkpoint_of_another_parametrisation_is_refused"},
    "test_faults.py": {"test_stage_time_limit_on_main_and_worker_threads"},
    "test_select_decide.py": {"test_same_thresholds_give_the_same_decisions",
                              "test_stricter_rejects_kept_clips_at_the_right_stage",
                              "test_looser_names_the_clips_that_need_a_rerun", "test_score_only_run_takes_any_threshold",
                              "test_where_rejects_at_select", "test_parse_sets",
                              "test_score_only_unchanged_bound_keeps_the_runs_verdict"},
}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.originalname not in FAST.get(item.path.name, ()):
            item.add_marker(pytest.mark.slow)
