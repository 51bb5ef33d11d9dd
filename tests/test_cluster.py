"""A real multi-node Ray run: two Ray nodes started with `ray start` on this machine (a head and a second raylet
with its own resources), `curation run --address` against them, compared with the same run on a local Ray. Also
the cluster launcher config in deploy/ and how model stages' GPU requests are fitted to a cluster."""

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
from test_faults import KILL_MANIFEST, check_output_dir, cli_env, run_ok, span_table

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


# ---------------------------------------------------------------------------------------------------
# Two Ray nodes on this machine

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


class TwoNodeCluster:
    """A head node and a second node, each a `ray start` of its own (own raylet, object store, ports, temp dir).
    Stopped by ending the processes it started (their process groups, and any process whose command line names
    its temp dir), never with `ray stop`, which would end every Ray on the machine."""

    def __init__(self, root: Path):
        self.root = root
        self.head_tmp = root / "h"
        self.worker_tmp = root / "w"
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
        return ["--node-ip-address", "127.0.0.1", "--num-cpus", "1", "--num-gpus", "0",
                "--resources", json.dumps({resource: 1}), "--temp-dir", str(tmp),
                "--object-store-memory", str(300 * 1024 * 1024),
                "--node-manager-port", str(nm), "--object-manager-port", str(om),
                "--dashboard-agent-listen-port", str(agent_http), "--dashboard-agent-grpc-port", str(agent_grpc),
                "--runtime-env-agent-port", str(rt_env), "--metrics-export-port", str(metrics),
                "--min-worker-port", "0", "--max-worker-port", "0",  # random worker ports: two raylets, one host
                "--disable-usage-stats"]

    def start(self) -> None:
        self.head_tmp.mkdir()
        self.worker_tmp.mkdir()
        self._start(["--head", "--port", str(self.port), "--include-dashboard=false",
                     *self._node_args("node_head", self.head_tmp)])
        self._start(["--address", self.address, *self._node_args("node_worker", self.worker_tmp)])

    def nodes(self) -> list[dict]:
        """ray.nodes() of the cluster, from a driver of its own (this test process stays out of Ray)."""
        code = ("import json, ray\n"
                f"ray.init(address={self.address!r}, log_to_driver=False)\n"
                "print('NODES=' + json.dumps([{'alive': n['Alive'], 'resources': n['Resources']} "
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
    c = TwoNodeCluster(root)
    try:
        c.start()
        yield c
    finally:
        c.stop()
        shutil.rmtree(root, ignore_errors=True)


def cluster_manifest(path: Path) -> Path:
    """KILL_MANIFEST's probe, scenes and write, with the default manifest's person stage (an actor pool)."""
    m = yaml.safe_load(KILL_MANIFEST)
    m["name"] = "cluster"
    default = yaml.safe_load((ROOT / "manifests" / "default.yaml").read_text())
    person = next(s for s in default["stages"] if s["name"] == "person")
    m["stages"].insert(2, person)
    path.write_text(yaml.safe_dump(m, sort_keys=False))
    return path


def test_run_on_a_two_node_cluster_equals_a_local_run(cluster, tmp_path):
    nodes = [n for n in cluster.nodes() if n["alive"]]
    assert len(nodes) == 2, nodes
    assert sorted(k for n in nodes for k in n["resources"] if k.startswith("node_")) == ["node_head", "node_worker"]
    assert sum(n["resources"].get("CPU", 0) for n in nodes) == 2

    inp = tmp_path / "in"
    inp.mkdir()
    for name in ("A1_hdtf_bob_menendez_talking_8s.mp4", "C1_documentary_6shots_anamorphic_25s.mp4"):
        os.symlink(FOOTAGE / name, inp / name)
    (inp / "random_bytes.mp4").write_bytes(os.urandom(100_000))
    manifest = cluster_manifest(tmp_path / "cluster.yaml")

    remote, local = tmp_path / "remote", tmp_path / "local"
    t0 = time.monotonic()
    # Relative paths from the driver's working directory: the cluster's workers run elsewhere (in the directory
    # `ray start` ran in), so the driver must hand them absolute ones.
    run_ok(["run", "--input", "in", "--output", "remote", "--manifest", manifest.name, "--address", cluster.address,
            "--weights", os.path.relpath(WEIGHTS, tmp_path)],
           tmp_path / "remote.log", env=cli_env(**cluster.auth_env), cwd=tmp_path, timeout=600)
    t_remote = time.monotonic() - t0
    run_ok(["run", "--input", str(inp), "--output", str(local), "--manifest", str(manifest), "--num-cpus", "2"],
           tmp_path / "local.log", env=cli_env(), timeout=600)
    print(f"cluster run {t_remote:.1f} s, local run {time.monotonic() - t0 - t_remote:.1f} s")

    index_r, index_l = check_output_dir(remote), check_output_dir(local)
    assert len(index_r) > 0
    assert sorted(index_r["key"]) == sorted(index_l["key"])
    cols = ["key", "source", "start_s", "end_s", "n_frames", "width", "height"]
    pd.testing.assert_frame_equal(index_r[cols].sort_values("key").reset_index(drop=True),
                                  index_l[cols].sort_values("key").reset_index(drop=True))
    spans = span_table(remote)
    assert spans == span_table(local)
    assert {s[0].split("_")[0] for s in spans} >= {"A1", "C1", "random"}
    assert any(s[3] == "unreadable" for s in spans)  # the bad file

    runs_r = [json.loads(ln) for ln in (remote / "audit" / "runs.jsonl").read_text().splitlines()]
    runs_l = [json.loads(ln) for ln in (local / "audit" / "runs.jsonl").read_text().splitlines()]
    assert [r["address"] for r in runs_r] == [cluster.address] and [r["address"] for r in runs_l] == ["local"]

    # The pipeline's tasks and actors ran on both nodes (Ray Data spreads them): each node's worker logs name them.
    for tmp in (cluster.head_tmp, cluster.worker_tmp):
        assert cluster.pipeline_work_in_logs(tmp), f"no pipeline task or actor ran on the node of {tmp}"
