"""A real multi-node Ray run: three Ray nodes started with `ray start` on this machine (a head and two more raylets,
each with its own resources), `curation run --address` against them with the default manifest over 24 sources,
compared with the same run on a local Ray; the same cluster losing a worker node mid-run. Also the deploy/
configs (cluster launcher, KubeRay RayJob) and how model stages' pools and GPU requests are fitted to a cluster."""

from __future__ import annotations

import copy
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from conftest import FOOTAGE, ROOT, WEIGHTS
from test_faults import check_output_dir, cli_env, end_group, run_ok, span_table, start_cli

VENV_BIN = ROOT / ".venv" / "bin"
RAY = str(VENV_BIN / "ray") if (VENV_BIN / "ray").exists() else (shutil.which("ray") or "ray")
PYTHON = str(VENV_BIN / "python") if (VENV_BIN / "python").exists() else "python3"


# ---------------------------------------------------------------------------------------------------
# deploy/ray-cluster.yaml, checked the way `ray up` checks it (no cloud account needed)

def test_cluster_launcher_config_is_valid():
    import jsonschema
    import ray
    from ray.autoscaler._private.util import prepare_config, validate_config

    cfg = yaml.safe_load((ROOT / "deploy" / "ray-cluster.yaml").read_text())
    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    jsonschema.validate(cfg, schema)
    validate_config(prepare_config(copy.deepcopy(cfg)))  # defaults merged, node types and head type checked

    types = cfg["available_node_types"]
    assert cfg["head_node_type"] in types
    workers = {k: v for k, v in types.items() if k != cfg["head_node_type"]}
    assert any(v["resources"].get("GPU", 0) >= 1 for v in workers.values()), "no GPU worker type"
    assert any(not v["resources"].get("GPU") and v["resources"].get("CPU", 0) >= 1 for v in workers.values())
    setup = "\n".join(cfg["setup_commands"])
    assert "apt-get install" in setup and "ffmpeg" in setup
    assert "python311-proven-freeze.txt" in setup and "~/talkcurate" in setup
    mounts = cfg["file_mounts"]
    assert mounts["~/talkcurate"] == "." and mounts["~/.ray/auth_token"] == "~/.ray/auth_token"
    assert "export RAY_AUTH_MODE=token" in setup  # the same authentication mode on every node
    head = "\n".join(cfg["head_start_ray_commands"])
    assert "ray start --head --port=6379" in head and "--autoscaling-config=~/ray_bootstrap_config.yaml" in head
    assert any("ray start --address=$RAY_HEAD_IP:6379" in c for c in cfg["worker_start_ray_commands"])


# ---------------------------------------------------------------------------------------------------
# Model stages on GPU workers when the cluster has GPUs (plan_stages, no Ray needed)

def test_gpu_requests_fitted_to_the_cluster():
    from curation.engine.config import load_manifest
    from curation.engine.pipeline import plan_stages

    tv = load_manifest("talkverse")
    asked = {s.name: s.resources.num_gpus for s in tv.enabled_stages() if s.resources.num_gpus > 0}
    assert asked == {"sync": 0.25}, asked

    on_gpus = {p.name: p for p in plan_stages(tv, str(WEIGHTS), False, {"CPU": 28.0, "GPU": 2.0})}
    assert on_gpus["sync"].resources.num_gpus == 0.25 and on_gpus["sync"].ctx.use_gpu
    assert not any(p.ctx.use_gpu for n, p in on_gpus.items() if n != "sync")

    on_cpus = plan_stages(tv, str(WEIGHTS), False, {"CPU": 2.0})
    assert all(p.resources.num_gpus == 0 and not p.ctx.use_gpu for p in on_cpus)

    default = load_manifest("default")
    assert all(s.resources.num_gpus == 0 for s in default.stages), "the default manifest must stay CPU-only"


def test_onnx_models_on_cuda_where_the_stage_has_a_gpu_share(caplog):
    """Execution providers from the installed onnxruntime (CPU-only here) and the stage's GPU share; a real
    session of a real model; a model stage that stays on CPU on a cluster with GPUs says so, once."""
    import logging

    import onnxruntime as ort

    from curation.engine.config import load_manifest
    from curation.engine.pipeline import plan_stages
    from curation.perception.ortsession import CPU, CUDA, cuda_missing_reason, providers_for
    from curation.perception.speech import SileroVAD

    installed = ort.get_available_providers()
    assert providers_for(False) == [CPU]
    assert providers_for(True) == ([CUDA, CPU] if CUDA in installed else [CPU])
    assert providers_for(True, [CUDA, CPU]) == [CUDA, CPU] and providers_for(False, [CUDA, CPU]) == [CPU]
    assert providers_for(True, ["TensorrtExecutionProvider", CPU]) == [CPU]
    assert (cuda_missing_reason() is None) == (CUDA in installed)
    vad = SileroVAD(str(WEIGHTS / "silero_vad" / "silero_vad.onnx"), use_gpu=True)
    assert vad.session.get_providers()[0] == (CUDA if CUDA in installed else CPU)

    tv = load_manifest("talkverse")
    with caplog.at_level(logging.WARNING, logger="curation"):
        plan_stages(tv, str(WEIGHTS), False, {"CPU": 28.0, "GPU": 2.0})
    on_cpu = [r.getMessage() for r in caplog.records if "runs on CPU" in r.getMessage()]
    assert sorted(m.split()[1] for m in on_cpu) == ["person", "quality", "skeleton"], on_cpu
    ort_lines = [r.getMessage() for r in caplog.records if "ONNX models run on CPU" in r.getMessage()]
    assert [m.split()[1] for m in ort_lines] == ([] if CUDA in installed else ["sync"]), ort_lines
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="curation"):
        plan_stages(load_manifest("default"), str(WEIGHTS), False, {"CPU": 2.0})
    assert not [r for r in caplog.records if "CPU:" in r.getMessage() or "GPU" in r.getMessage()]  # CPU-only: nothing


def test_pools_sized_to_the_cluster():
    """`auto` pool maxima (the default in both manifests) from the cluster's CPUs, GPUs and memory; explicit
    numbers win; a pool keeps one actor per node at least (a single machine: 1)."""
    from curation.engine.config import load_manifest
    from curation.engine.pipeline import plan_stages

    for name in ("default", "talkverse"):
        m = load_manifest(name)
        models = [s for s in m.enabled_stages() if s.name in ("person", "quality", "sync", "skeleton")]
        assert models and all(s.resources.concurrency[1] == "auto" for s in models), name
        assert all(s.resources.memory_gb for s in m.enabled_stages()), f"{name}: a stage declares no memory"

    m = load_manifest("default")
    big = {p.name: p for p in plan_stages(m, str(WEIGHTS), False, {"CPU": 64.0, "memory": 256 * 2**30}, nodes=4)}
    assert {n: big[n].resources.concurrency for n in ("person", "quality", "sync", "skeleton")} == {
        "person": (4, 64), "quality": (4, 64), "sync": (4, 64), "skeleton": (4, 64)}
    assert all(big[n].initial == 4 for n in ("person", "quality", "sync", "skeleton"))
    # memory bounds the pool: 8 GiB holds 10 actors of 0.75 GiB (sync, skeleton), 8 of 1.0 (person, quality)
    tight = {p.name: p for p in plan_stages(m, str(WEIGHTS), False, {"CPU": 64.0, "memory": 8 * 2**30})}
    assert tight["sync"].resources.concurrency == (1, 10) and tight["person"].resources.concurrency == (1, 8)
    small = {p.name: p for p in plan_stages(m, str(WEIGHTS), False, {"CPU": 2.0, "memory": 8 * 2**30})}
    assert small["skeleton"].resources.concurrency == (1, 2) and small["skeleton"].initial == 1

    fixed = m.model_copy(deep=True)
    fixed.stage("person").resources.concurrency = (2, 3)
    fixed._params = m._params
    assert {p.name: p for p in plan_stages(fixed, str(WEIGHTS), False, {"CPU": 64.0})}["person"].resources.concurrency == (2, 3)


def test_a_pool_starts_with_one_actor_on_each_node():
    """The placement build_dataset hands Ray Data for a model pool: its first actors one to each node (soft node
    affinity), later ones SPREAD; nothing on one node or for a pool smaller than the cluster."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from curation.engine.pipeline import one_actor_per_node

    nodes = ["a" * 56, "b" * 56, "c" * 56]
    place = one_actor_per_node(nodes, initial=3)
    first = [place()["scheduling_strategy"] for _ in nodes]
    assert all(isinstance(f, NodeAffinitySchedulingStrategy) and f.soft for f in first)
    assert [f.node_id for f in first] == nodes
    assert place()["scheduling_strategy"] == "SPREAD" and place()["scheduling_strategy"] == "SPREAD"
    assert one_actor_per_node(nodes[:1], initial=1) is None
    assert one_actor_per_node(nodes, initial=2) is None


def test_kuberay_rayjob_manifest():
    docs = list(yaml.safe_load_all((ROOT / "deploy" / "rayjob.yaml").read_text()))
    job = next(d for d in docs if d and d.get("kind") == "RayJob")
    assert job["apiVersion"].startswith("ray.io/") and job["metadata"]["name"]
    spec = job["spec"]
    assert spec["entrypoint"].split()[:2] == ["curation", "run"]
    for flag in ("--input", "--output", "--address"):
        assert flag in spec["entrypoint"]
    assert "s3://" in spec["entrypoint"]
    cluster = spec["rayClusterSpec"]
    head = cluster["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert head["image"] and head["resources"]["limits"]["cpu"]
    groups = cluster["workerGroupSpecs"]
    assert groups and all(g["groupName"] and g["template"]["spec"]["containers"][0]["image"] for g in groups)
    assert any("nvidia.com/gpu" in g["template"]["spec"]["containers"][0]["resources"]["limits"] for g in groups)
    assert all(g["minReplicas"] <= g["replicas"] <= g["maxReplicas"] for g in groups)
    assert spec.get("shutdownAfterJobFinishes") is True


# ---------------------------------------------------------------------------------------------------
# Three Ray nodes on this machine

def free_ports(n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


NODE_CPUS = 2
NODE_MEMORY = 8 * 2**30  # logical: what Ray may hand out on the node, not what the test uses


class LocalCluster:
    """A head node and `workers` more nodes, each a `ray start` of its own (own raylet, object store, ports, temp
    dir, NODE_CPUS logical CPUs). Stopped by ending the processes it started (their process groups, and any process
    whose command line names its temp dir), never with `ray stop`, which would end every Ray on the machine."""

    def __init__(self, root: Path, workers: int = 2):
        self.root = root
        self.head_tmp = root / "h"
        self.worker_tmps = [root / f"w{i}" for i in range(workers)]
        self.port = free_ports(1)[0]
        self.address = f"127.0.0.1:{self.port}"
        self.groups: list[int] = []
        self.log = root / "ray-start.log"
        # Token authentication on every node and for every driver, with a token of this cluster's own (Ray 2.60
        # turns it on for a head that finds ~/.ray/auth_token, but not for a node joining it: set it explicitly).
        self.auth_env = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}

    def env(self) -> dict:
        env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0", **self.auth_env)
        for k in ("RAY_ADDRESS", "RAY_AUTH_TOKEN_PATH"):
            env.pop(k, None)
        # `ray start` from the venv: its workers run the venv's Python, as the driver's do.
        env["PATH"] = os.pathsep.join([str(VENV_BIN), env.get("PATH", "")])
        return env

    def _start(self, args: list[str]) -> None:
        with open(self.log, "ab") as f:
            p = subprocess.Popen([RAY, "start", *args], stdout=f, stderr=subprocess.STDOUT, env=self.env(),
                                 cwd=self.root, start_new_session=True)
        self.groups.append(p.pid)
        rc = p.wait(timeout=120)
        assert rc == 0, f"ray start {' '.join(args)} exited {rc}\n{self.log.read_text(errors='replace')[-4000:]}"

    def _node_args(self, resource: str, tmp: Path) -> list[str]:
        nm, om, agent_http, agent_grpc, rt_env, metrics = free_ports(6)
        return ["--node-ip-address", "127.0.0.1", "--num-cpus", str(NODE_CPUS), "--num-gpus", "0",
                "--memory", str(NODE_MEMORY), "--resources", json.dumps({resource: 1}), "--temp-dir", str(tmp),
                "--object-store-memory", str(300 * 1024 * 1024),
                "--node-manager-port", str(nm), "--object-manager-port", str(om),
                "--dashboard-agent-listen-port", str(agent_http), "--dashboard-agent-grpc-port", str(agent_grpc),
                "--runtime-env-agent-port", str(rt_env), "--metrics-export-port", str(metrics),
                "--min-worker-port", "0", "--max-worker-port", "0",  # random worker ports: three raylets, one host
                "--disable-usage-stats"]

    def start(self) -> None:
        self.head_tmp.mkdir()
        self._start(["--head", "--port", str(self.port), "--include-dashboard=false",
                     *self._node_args("node_head", self.head_tmp)])
        for i, tmp in enumerate(self.worker_tmps):
            tmp.mkdir()
            self._start(["--address", self.address, *self._node_args(f"node_worker{i}", tmp)])

    def nodes(self) -> list[dict]:
        """ray.nodes() of the cluster, from a driver of its own (this test process stays out of Ray)."""
        code = ("import json, ray\n"
                f"ray.init(address={self.address!r}, log_to_driver=False)\n"
                "print('NODES=' + json.dumps([{'alive': n['Alive'], 'id': n['NodeID'], 'resources': n['Resources']} "
                "for n in ray.nodes()]))\n")
        p = subprocess.run([PYTHON, "-c", code], capture_output=True, text=True, env=self.env(), timeout=120)
        assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-4000:]
        line = next(ln for ln in p.stdout.splitlines() if ln.startswith("NODES="))
        return json.loads(line[len("NODES="):])

    @staticmethod
    def pipeline_work_in_logs(tmp: Path) -> list[str]:
        """Pipeline tasks/actors whose workers ran on the node with temp dir `tmp` (Ray writes a worker's task and
        actor names into its log files)."""
        names = set()
        for f in tmp.glob("session_*/logs/worker-*.out"):
            for line in f.read_text(errors="replace").splitlines():
                if line.startswith((":task_name:MapBatches(", ":actor_name:MapWorker(MapBatches(")):
                    names.add(line.split(":", 2)[2])
        return sorted(names)

    def raylet_pid(self, tmp: Path) -> int:
        """The raylet of the node whose temp dir is `tmp`."""
        for d in Path("/proc").iterdir():
            if not d.name.isdigit():
                continue
            try:
                argv = (d / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if argv and argv[0].endswith(b"/raylet") and any(str(tmp).encode() in a for a in argv):
                return int(d.name)
        raise AssertionError(f"no raylet for {tmp}")

    def _own_pids(self) -> set[int]:
        """Processes of this cluster: in the process groups of its `ray start` commands (Ray's daemons stay in
        them), or naming its temp dir or GCS address on their command line (workers)."""
        mark = re.compile(rb"%s|127\.0\.0\.1:%d(?!\d)" % (re.escape(str(self.root).encode()), self.port))
        pids = set()
        for d in Path("/proc").iterdir():
            if not d.name.isdigit() or int(d.name) == os.getpid():
                continue
            try:
                if (d / "stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                    continue  # ended, not yet reaped
                cmd = (d / "cmdline").read_bytes()
                if mark.search(cmd) or os.getpgid(int(d.name)) in self.groups:
                    pids.add(int(d.name))
            except OSError:  # gone, or not ours to read
                continue
        return pids

    def stop(self) -> None:
        for sig, wait_s in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
            pids = self._own_pids()
            for pid in pids:
                try:
                    os.kill(pid, sig)
                except OSError:
                    pass
            deadline = time.monotonic() + wait_s
            while pids and time.monotonic() < deadline:
                time.sleep(0.2)
                pids = self._own_pids()
            if not pids:
                return


@pytest.fixture(scope="module")
def cluster():
    root = Path(tempfile.mkdtemp(prefix="rc-", dir="/tmp"))  # short: Ray's socket paths must stay < 108 bytes
    c = LocalCluster(root, workers=2)
    try:
        c.start()
        yield c
    finally:
        c.stop()
        shutil.rmtree(root, ignore_errors=True)


# 24 sources, cheap ones, some under several names (a name is a source: its own key). 10 reach the model stages
# and are kept: A1's first 5.6 s (one ffmpeg cut, the shortest that still gives a 5-s clip after scenes' trim)
# under 8 names, S09 and S11; 14 stop at probe or scenes. Ten clips give every model stage work for more than one
# actor at once; a1c_* keeps the model work near that of the four 8-s A1 copies used before.
A1_CUT_S = 5.6
CLUSTER_SOURCES = (
    [("a1_cut", f"a1c_{i}") for i in range(8)]
    + [("S09_SadTalker-HDTF_woman-radio-address_8s.mp4", "s09"), ("S11_SadTalker-HDTF_EdMarkey_address_8s.mp4", "s11")]
    + [(f, f"{tag}_{i}") for f, tag, n in (("A4_retalk_woman_glasses_talking_5s.mp4", "a4", 4),
                                            ("A5_vexpress_aoc_gt_5s.mp4", "a5", 2),
                                            ("D5_lowq_carphone_176x144_pristine_4s.mp4", "d5", 4)) for i in range(n)]
    + [(None, f"random_{i}") for i in range(4)]
)
MODEL_STAGES = ("person", "quality", "sync", "skeleton")
KEPT = 10


@pytest.fixture(scope="module")
def cluster_input(tmp_path_factory) -> Path:
    from conftest import ffmpeg

    d = tmp_path_factory.mktemp("cin")
    inp = d / "in"
    inp.mkdir()
    cut = d / "a1_cut.mp4"
    ffmpeg("-i", str(FOOTAGE / "A1_hdtf_bob_menendez_talking_8s.mp4"), "-t", str(A1_CUT_S), "-c:v", "libx264",
           "-preset", "veryfast", "-crf", "18", "-c:a", "aac", str(cut))
    for src, name in CLUSTER_SOURCES:
        if src is None:
            (inp / f"{name}.mp4").write_bytes(os.urandom(50_000))
        else:
            os.symlink(cut if src == "a1_cut" else FOOTAGE / src, inp / f"{name}.mp4")
    assert len(list(inp.iterdir())) == 24
    return inp


@pytest.fixture(scope="module")
def local_reference(cluster_input) -> Path:
    """The default manifest over the 24 sources on a local Ray: what every cluster run must reproduce."""
    out = cluster_input.parent / "local"
    run_ok(["run", "--input", str(cluster_input), "--output", str(out), "--num-cpus", "2"],
           cluster_input.parent / "local.log", env=cli_env(), timeout=900)
    return out


def _index_cols(out: Path) -> pd.DataFrame:
    idx = check_output_dir(out)
    cols = ["key", "source", "start_s", "end_s", "n_frames", "width", "height"]
    return idx[cols].sort_values("key").reset_index(drop=True)


@pytest.mark.slow
def test_three_node_run_equals_a_local_run(cluster, cluster_input, local_reference):
    nodes = [n for n in cluster.nodes() if n["alive"]]
    assert len(nodes) == 3, nodes
    assert sum(n["resources"].get("CPU", 0) for n in nodes) == 3 * NODE_CPUS

    work = cluster_input.parent
    remote = work / "remote"
    t0 = time.monotonic()
    # Relative paths from the driver's working directory: the cluster's workers run elsewhere (in the directory
    # `ray start` ran in), so the driver must hand them absolute ones.
    run_ok(["run", "--input", "in", "--output", "remote", "--address", cluster.address,
            "--weights", os.path.relpath(WEIGHTS, work)],
           work / "remote.log", env=cli_env(**cluster.auth_env), cwd=work, timeout=900)
    print(f"cluster run {time.monotonic() - t0:.1f} s")

    index_r, index_l = _index_cols(remote), _index_cols(local_reference)
    assert len(index_r) == KEPT  # the eight a1c names, S09, S11
    pd.testing.assert_frame_equal(index_r, index_l)
    assert span_table(remote) == span_table(local_reference)
    assert len(pd.read_parquet(remote / "audit" / "sources.parquet")) == 24

    # Where every clip ran (audit/clips.parquet): every stage on nodes of this cluster; every model stage on at
    # least 2 workers on at least 2 nodes (pools keep one actor per node; one clip per block, so the clips of a
    # source or of a batch are not handed to one actor together).
    clips = pd.read_parquet(remote / "audit" / "clips.parquet")
    node_ids = {n["id"][:16] for n in nodes}
    used = {}
    for stage in ("scenes", *MODEL_STAGES, "write"):
        ran = clips.dropna(subset=[f"node__{stage}"])
        assert len(ran) >= KEPT, stage
        assert set(ran[f"node__{stage}"]) <= node_ids, stage
        used[stage] = (ran[f"node__{stage}"].nunique(), ran[f"worker__{stage}"].nunique())
    print("nodes, workers per stage:", used)
    for stage in MODEL_STAGES:
        assert used[stage][0] >= 2 and used[stage][1] >= 2, (stage, used)
    kept = clips[clips["status"] == "kept"]
    assert kept["node__write"].notna().all() and kept["worker__write"].str.startswith("task:").all()
    assert clips["worker__person"].dropna().str.startswith("actor:").all()

    # The driver received metadata only: under 2 % of the shard bytes the workers wrote.
    (run,) = [json.loads(ln) for ln in (remote / "audit" / "runs.jsonl").read_text().splitlines()]
    on_disk = sum(p.stat().st_size for p in (remote / "shards").iterdir())
    assert run["shard_bytes"] == on_disk > 0
    print(f"driver received {run['driver_bytes_received']} B for {on_disk} B of shards "
          f"({100 * run['driver_bytes_received'] / on_disk:.3f} %)")
    assert run["driver_bytes_received"] < 0.02 * on_disk
    assert run["address"] == cluster.address


def in_subset(stem: str) -> bool:
    """The dead-node run's sources: six of the a1c names, S11 and the A4s (no clip)."""
    return stem in {f"a1c_{i}" for i in range(6)} | {"s11"} or stem.startswith("a4_")


@pytest.mark.slow
def test_a_worker_node_dying_mid_run_loses_nothing(cluster, cluster_input, local_reference, tmp_path):
    """The raylet of one worker node killed while the pipeline's actors run on it: Ray retries the node's tasks
    and restarts its actors elsewhere; the run ends with the uninterrupted run's index."""
    victim = cluster.worker_tmps[-1]
    subset = sorted(p for p in cluster_input.iterdir() if in_subset(p.stem))
    listing = tmp_path / "sources.txt"
    listing.write_text("\n".join(str(p) for p in subset) + "\n")
    out = tmp_path / "out"
    proc = start_cli(["run", "--input", str(listing), "--output", str(out), "--address", cluster.address],
                     tmp_path / "run.log", env=cli_env(**cluster.auth_env))
    killed_at = None
    try:
        t0 = time.monotonic()
        while proc.poll() is None and time.monotonic() - t0 < 600:
            if killed_at is None and any("person" in n.lower() or "StageActor" in n
                                         for n in cluster.pipeline_work_in_logs(victim)):
                time.sleep(5)  # its actors are at work
                os.kill(cluster.raylet_pid(victim), signal.SIGKILL)
                killed_at = time.monotonic() - t0
            time.sleep(0.5)
        rc = proc.wait(timeout=60)
    finally:
        end_group(proc)
    log = (tmp_path / "run.log").read_text(errors="replace")
    assert killed_at is not None, "the pipeline never ran on the worker node"
    assert rc == 0, log[-4000:]
    assert sum(n["alive"] for n in cluster.nodes()) == 2
    expected = _index_cols(local_reference)
    expected = expected[expected["source"].isin({str(p) for p in subset})].reset_index(drop=True)
    assert len(expected) == 7
    pd.testing.assert_frame_equal(_index_cols(out), expected)
    stems = {p.stem for p in subset}
    ref_spans = [s for s in span_table(local_reference) if s[0].rsplit("_", 2)[0] in stems or
                 s[0].rsplit("_", 1)[0] in stems]  # clip keys <stem>_<id>_<n>, source rows <stem>_<id>
    assert span_table(out) == ref_spans
