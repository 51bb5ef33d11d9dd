"""Pipeline assembly: the manifest's stages as a Ray Data plan, streamed into the committer.

Local Ray on this machine by default; an existing cluster with `address` (or RAY_ADDRESS), with no code
change. Stages without models run as Ray tasks; stages with models run as actor pools, so each actor loads
its models once. Rows carry one serialised ClipRecord each (time spans, boxes, small arrays, and at the end
the encoded clip bytes), never decoded video."""

from __future__ import annotations

import contextlib
import ctypes
import itertools
import json
import logging
import os
import shutil
import sys
import time
import uuid
import warnings
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from curation.engine import thresholds
from curation.engine.audit import consolidate
from curation.engine.config import Manifest, Resources, load_manifest
from curation.engine.ingest import absolute_path, iter_inputs
from curation.media.ffmpeg import sweep_stale_temp_dirs
from curation.engine.output import Committer, OutputDir, Store, pack_and_write
from curation.engine import runlog
from curation.engine.preflight import preflight
from curation.report import progress
from curation.engine.record import ClipRecord
from curation.weights import resolve, weights_dir
from stages import stage_class
from stages.base import StageContext

log = logging.getLogger("curation")


class RunError(RuntimeError):
    """A problem found before any work starts (missing weights, output made with another manifest)."""


# ---------------------------------------------------------------------------------------------------
# Ray Data adapters: thin wrappers around the plain stage classes.

def _records(batch: dict) -> list[ClipRecord]:
    return [ClipRecord.from_bytes(b) for b in batch["rec"]]


def _batch(records: list[ClipRecord]) -> dict:
    rec = np.empty(len(records), dtype=object)
    rec[:] = [r.to_bytes() for r in records]
    return {"key": np.array([r.key for r in records], dtype=object), "rec": rec}


# A clip whose worker dies this many times while a stage processes it (a crash in native code, a kill, the
# out-of-memory killer) is rejected with `error:<stage>` instead of being tried again.
MAX_CLIP_ATTEMPTS = 2


class AttemptLog:
    """Which clips a stage has started and not finished, in the Ray cluster's key-value store (the GCS): shared
    by the workers of every node and kept when a worker dies. A clip found there when a batch starts was being
    processed by a worker that died: the batch is a Ray retry. Inactive outside Ray (plain stage calls)."""

    def __init__(self, run_id: str | None, stage: str):
        self.kv = None
        if run_id:
            try:
                from ray.experimental import internal_kv

                if internal_kv._internal_kv_initialized():
                    self.kv = internal_kv
            except ImportError:
                pass
        self.ns = f"talkcurate-{run_id}"
        self.stage = stage

    def _k(self, key: str) -> bytes:
        return f"{self.stage}/{key}".encode()

    def get(self, key: str) -> dict:
        v = self.kv._internal_kv_get(self._k(key), namespace=self.ns)
        return json.loads(v) if v else {}

    def put(self, key: str, state: dict) -> None:
        self.kv._internal_kv_put(self._k(key), json.dumps(state).encode(), overwrite=True, namespace=self.ns)

    def delete(self, key: str) -> None:
        self.kv._internal_kv_del(self._k(key), namespace=self.ns)

    def hard_timeout(self, rec: ClipRecord, reason: str, message: str) -> None:
        """Called by a worker about to kill itself over a clip stuck past its time limit."""
        self.put(rec.key, {**self.get(rec.key), "verdict": [reason, message]})


def process_batch(stage, records: list[ClipRecord], run_id: str | None = None) -> list[ClipRecord]:
    """One batch through one stage, robust to the worker dying on a clip.

    First attempt (no clip of the batch in the attempt log): the batch as it came, every clip logged as
    started. A Ray retry (some clip logged, so a worker died on this batch): clip by clip, each logged while
    it runs; a clip that has already taken down MAX_CLIP_ATTEMPTS workers, or that a watchdog found stuck
    past its time limit, is rejected at once (`error:<stage>` / `timeout:<stage>`) and the rest go on."""
    log = AttemptLog(run_id, stage.name)
    if log.kv is None:
        return stage.process(records)
    stage.on_hard_timeout = log.hard_timeout
    active = [r for r in records if stage.should_process(r)]
    state = {r.key: log.get(r.key) for r in active}
    if not any(state.values()):
        for r in active:
            log.put(r.key, {"n": 1})
        out = stage.process(records)
        for r in active:
            log.delete(r.key)
        return out
    log_ = logging.getLogger("curation")
    out: list[ClipRecord] = []
    for r in records:
        if not stage.should_process(r):
            out.append(r)
            continue
        st = state.get(r.key) or {}
        n = int(st.get("n", 0))
        if st.get("verdict"):
            reason, message = st["verdict"]
            r.reject(stage.name, reason, message)
        elif n >= MAX_CLIP_ATTEMPTS:
            r.reject(stage.name, f"error:{stage.name}",
                     f"the {stage.name} worker died {n} times while processing this clip (a crash in native "
                     f"code, a kill or out of memory); not tried again")
        else:
            if n:
                log_.warning("%s: retrying %s after its worker died (attempt %d of %d)", stage.name, r.key, n + 1,
                             MAX_CLIP_ATTEMPTS)
            log.put(r.key, {"n": n + 1})
            out.extend(stage.process([r]))
            log.delete(r.key)
            continue
        log.delete(r.key)
        out.append(r)
    return out


_libc_trim = None


def release_free_heap() -> None:
    """After every batch in a Ray worker: hand the C heap's free pages back to the OS (glibc's malloc_trim;
    a no-op where the C library has none).

    A Ray worker runs some 30 threads and decord starts a new decoder thread at every seek, so glibc spreads
    a clip's frame buffers over its 16 arenas (8 per core), and with its dynamic mmap threshold buffers of a few
    MB are carved from those arenas rather than mapped on their own; what an arena frees stays resident. On the
    person actor (50-s clips of an hour-long source) 0.2-0.3 GB of freed memory stayed resident between clips
    and crept up (over 1 GB while curation.media.frames still let decord read ahead); a trim takes ~20 ms."""
    global _libc_trim
    if _libc_trim is None:
        try:
            _libc_trim = ctypes.CDLL(None).malloc_trim
        except (AttributeError, OSError):
            _libc_trim = False
    if _libc_trim:
        _libc_trim(0)


_swept = False


def _sweep_once() -> None:
    """Once per worker process: scratch directories of workers killed on this node go."""
    global _swept
    if not _swept:
        _swept = True
        sweep_stale_temp_dirs()


def _worker_place(actor: bool) -> tuple[str, str]:
    """(Ray node id, worker) of this process: the actor's id, or the task worker's process id."""
    try:
        import ray

        rc = ray.get_runtime_context()
        node = rc.get_node_id() or ""
        worker = f"actor:{rc.get_actor_id()[:16]}" if actor and rc.get_actor_id() else f"task:{os.getpid()}"
        return node[:16], worker
    except Exception:  # outside Ray
        return "", f"pid:{os.getpid()}"


def _stamp(stage_name: str, recs: list[ClipRecord], place: tuple[str, str]) -> list[ClipRecord]:
    """Every record this stage processed (it has its timing) records where: audit/clips.parquet's
    node__<stage> and worker__<stage>."""
    for r in recs:
        if stage_name in r.timings or stage_name == "pack":
            r.where[stage_name] = list(place)
    return recs


@contextlib.contextmanager
def decode_memory(memory_gb: float | None):
    """Around each batch: the stage's memory request (resources.memory_gb) bounds what a decode in this worker may
    take (curation.media.frames.set_memory_request); no bound outside a batch."""
    from curation.media import frames

    frames.set_memory_request(int(memory_gb * 2**30) if memory_gb else None)
    try:
        yield
    finally:
        frames.set_memory_request(None)


def run_stage_task(batch: dict, stage_name: str, params: dict, ctx: StageContext, run_id: str | None = None,
                   memory_gb: float | None = None) -> dict:
    """A stage without models, as a Ray task: cheap to build per batch."""
    _sweep_once()
    cls = stage_class(stage_name)
    stage = cls(cls.Params.model_validate(params), ctx)
    with decode_memory(memory_gb):
        out = _batch(_stamp(stage_name, process_batch(stage, _records(batch), run_id), _worker_place(False)))
    release_free_heap()
    return out


def run_pack_task(batch: dict, store: Store, manifest_name: str, fps: float, audio_rate: int,
                  shard_max_samples: int, shard_max_bytes: int) -> dict:
    """After the write stage, on the workers: kept clips packed into shards written straight to the output
    location; only metadata goes on to the driver (see output.pack_and_write)."""
    recs = pack_and_write(_records(batch), store, manifest_name, fps, audio_rate, shard_max_samples,
                          shard_max_bytes)
    out = _batch(recs)
    release_free_heap()
    return out


class StageActor:
    """A stage with models, as a Ray actor: built (models loaded) once, then fed batches."""

    def __init__(self, stage_name: str, params: dict, ctx: StageContext, run_id: str | None = None,
                 memory_gb: float | None = None):
        _sweep_once()
        cls = stage_class(stage_name)
        self.stage = cls(cls.Params.model_validate(params), ctx)
        self.run_id = run_id
        self.memory_gb = memory_gb
        self.place = _worker_place(True)

    def __call__(self, batch: dict) -> dict:
        with decode_memory(self.memory_gb):
            out = _batch(_stamp(self.stage.name, process_batch(self.stage, _records(batch), self.run_id), self.place))
        release_free_heap()
        return out


# ---------------------------------------------------------------------------------------------------

@dataclass
class StagePlan:
    name: str
    params: dict
    resources: Resources
    uses_models: bool
    ctx: StageContext
    initial: int = 1  # actors a model stage's pool starts with


def check_weights(manifest: Manifest, wdir: str) -> None:
    """Every weight file every enabled stage needs, checked before any work starts."""
    for spec in manifest.enabled_stages():
        cls = stage_class(spec.name)
        params = manifest.params(spec.name)
        for name in cls.required_weights(params):
            resolve(name, wdir, stage=spec.name)
        if hasattr(cls, "check_startup"):
            cls.check_startup(params, wdir)


def auto_pool_max(res: Resources, cluster: dict) -> int:
    """The most actors of one model stage the cluster can hold: one per core (a model actor keeps a core busy
    whatever fraction of a CPU it is scheduled with), per GPU share where it asks GPUs, per memory request
    where it declares one; never below the pool's minimum."""
    cpus = float(cluster.get("CPU", 1.0))
    n = int(cpus // max(res.num_cpus, 1.0))
    if res.num_gpus > 0:
        n = min(n, int(float(cluster.get("GPU", 0.0)) // res.num_gpus))
    if res.memory_gb:
        mem = float(cluster.get("memory", 0.0))
        if mem > 0:
            n = min(n, int(mem // (res.memory_gb * 2**30)))
    return max(int(res.concurrency[0]), n)


def plan_stages(manifest: Manifest, wdir: str, score_only: bool, cluster: dict, nodes: int = 1) -> list[StagePlan]:
    """Per-stage resources from the manifest, fitted to the cluster: GPU requests are dropped where the
    cluster has no GPU, a pool maximum of `auto` becomes what the cluster holds (auto_pool_max) and the pool
    keeps at least one actor per node (`nodes`, at most that maximum; build_dataset puts one on each node), and CPU
    requests are scaled down when the stages' minimum pools would not all fit at once (on a 2-core machine a
    whole CPU per actor would starve the rest of the pipeline)."""
    cpus = float(cluster.get("CPU", 1.0))
    gpus = float(cluster.get("GPU", 0.0))
    plans = []
    for spec in manifest.enabled_stages():
        cls = stage_class(spec.name)
        res = spec.resources.model_copy()
        if res.num_gpus > 0 and gpus <= 0:
            log.warning("stage %s asks for %.2g GPU but the cluster has none: running on CPU", spec.name, res.num_gpus)
            res.num_gpus = 0.0
        if cls.uses_models and res.concurrency[1] == "auto":
            res.concurrency = (res.concurrency[0], auto_pool_max(res, cluster))
        ctx = StageContext(weights_dir=wdir, fps=manifest.video.fps, audio_rate=manifest.video.audio_rate,
                           score_only=score_only, timeout_s=res.timeout_s, video=manifest.video.model_dump(),
                           use_gpu=res.num_gpus > 0)
        initial = res.concurrency[0]
        if cls.uses_models and spec.resources.concurrency[1] == "auto":
            # One actor per node at least, for the whole run (build_dataset places them one on each node: see
            # one_actor_per_node); an idle pool shrinks to its minimum, so a pool of minimum 1 on a cluster ends
            # up on one node however many the cluster has.
            initial = max(initial, min(int(res.concurrency[1]), nodes))
            res.concurrency = (initial, res.concurrency[1])
        plans.append(StagePlan(spec.name, manifest.params(spec.name).model_dump(), res, cls.uses_models, ctx,
                               initial))
    # What one node must hold as the run starts: its share of the pools (one actor per node for `auto`) and
    # one task of every task stage beside them. Fitted per node, not cluster-wide: a cluster whose total fits
    # but whose nodes are each filled by actors leaves no node a task can be placed on.
    nodes = max(1, nodes)
    node_cpus = cpus / nodes
    demand = sum(p.resources.num_cpus * (p.initial / nodes if p.uses_models else 1) for p in plans)
    if demand > node_cpus:
        factor = node_cpus / demand
        log.warning("stages ask for %.2f CPUs per node at minimum, a node has %.2g: scaling CPU requests by %.2f",
                    demand, node_cpus, factor)
        for p in plans:
            p.resources.num_cpus = round(p.resources.num_cpus * factor, 3)
    announce_devices(plans, gpus)
    log.info("pools: %s", ", ".join(f"{p.name} {p.resources.concurrency[0]}-{p.resources.concurrency[1]} "
                                    f"(starting with {p.initial})" for p in plans if p.uses_models))
    return plans


def announce_devices(plans: list[StagePlan], gpus: float) -> dict[str, str]:
    """Where each model stage's models run, said once at the start of a run: on a cluster with GPUs a model
    stage that stays on CPU says so (a warning), and a stage given a GPU share says so when onnxruntime here
    cannot use CUDA (its ONNX models then run on CPU; its torch models still on the GPU). Returns stage -> device."""
    from curation.perception.ortsession import cuda_missing_reason

    devices = {p.name: ("cuda" if p.resources.num_gpus > 0 else "cpu") for p in plans if p.uses_models}
    if gpus <= 0:
        log.info("model stages on CPU (the cluster has no GPU): %s", ", ".join(devices))
        return devices
    ort_reason = cuda_missing_reason()
    for p in plans:
        if not p.uses_models:
            continue
        if devices[p.name] == "cpu":
            log.warning("stage %s runs on CPU: its manifest gives it no GPU share (resources.num_gpus)", p.name)
        elif ort_reason:
            log.warning("stage %s runs on %.2g GPU, but %s: its ONNX models run on CPU", p.name,
                        p.resources.num_gpus, ort_reason)
    return devices


@dataclass
class PackPlan:
    """The step after the write stage that packs kept clips into shards on the workers."""
    store: Store
    manifest_name: str
    fps: float
    audio_rate: int
    shard_max_samples: int
    shard_max_bytes: int
    num_cpus: float
    memory_gb: float | None


def cpu_node_ids() -> list[str]:
    """The alive nodes of the connected Ray cluster that have CPUs (hex node ids), in Ray's order."""
    import ray

    return [n["NodeID"] for n in ray.nodes() if n.get("Alive") and n.get("Resources", {}).get("CPU", 0) > 0]


def one_actor_per_node(node_ids: list[str], initial: int):
    """Ray Data's `ray_remote_args_fn` for a model pool that starts with an actor per node (plan_stages): its
    first len(node_ids) actors go one to each node (soft node affinity: a node that is gone or cannot hold the
    actor is passed over), later ones (scaling up, replacements) SPREAD as usual. None on one node, or where the
    pool starts smaller than the cluster (an explicit `concurrency`).

    Ray's SPREAD alone is best effort: it places an actor on whichever node has room when the pool starts. In two
    recent runs of the three-node test, one actor of the quality pool ran every clip, on one node of three."""
    if len(node_ids) < 2 or initial < len(node_ids):
        return None
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    made = itertools.count()

    def remote_args() -> dict:
        k = next(made)
        if k < len(node_ids):
            return {"scheduling_strategy": NodeAffinitySchedulingStrategy(node_ids[k], soft=True)}
        return {"scheduling_strategy": "SPREAD"}

    return remote_args


def build_dataset(records: list[ClipRecord], plans: list[StagePlan], run_id: str | None = None,
                  pack: PackPlan | None = None):
    """The plan as a Ray Data dataset. Worker deaths are retried by Ray (tasks: Ray's default of 3 retries;
    actors: restarted, their tasks retried; see process_batch for how a clip that keeps killing its worker is
    found and rejected); a block that still fails is dropped rather than failing the run, and the driver
    processes its sources again."""
    import ray

    ctx = ray.data.DataContext.get_current()
    ctx.max_errored_blocks = -1
    # One record per block, at every step: a block is what Ray Data hands to one actor (or task), so a stage's
    # output of several clips in one block would go to a single actor of the next pool, on a single node,
    # however many actors wait idle elsewhere. A record is small (the clip bytes leave on the pack step), so a
    # block per record costs little; Ray Data slices every output into blocks of at most this many bytes, and
    # never below one row.
    ctx.target_max_block_size = 1
    # Each actor pool starts work once its minimum actors are up (plan_stages fits them to the cluster). Started
    # asynchronously (Ray Data's default), the first actor to load its models takes every block of a short run
    # while the others on other nodes are still loading. Ray Data raises after this long if they never come up.
    ctx.wait_for_min_actors_s = 600
    ds = ray.data.from_items([{"key": r.key, "rec": r.to_bytes()} for r in records],
                             override_num_blocks=max(1, len(records)))
    prev_task: dict | None = None  # the request of the step before, where it was a task stage
    node_ids = cpu_node_ids()
    for p in plans:
        r = p.resources
        common = dict(batch_size=r.batch_size, batch_format="numpy", num_cpus=r.num_cpus)
        if r.num_gpus:
            common["num_gpus"] = r.num_gpus
        if r.memory_gb:
            common["memory"] = int(r.memory_gb * 2**30)
        request = {k: common.get(k) for k in ("num_cpus", "num_gpus", "memory")}
        if p.uses_models and request == prev_task:
            # Ray Data fuses a task step into the actor step after it when both ask the same resources: the task
            # stage would run inside the model actors, one pool for both. One byte more keeps them apart.
            common["memory"] = int(common.get("memory") or 0) + 1
        prev_task = None if p.uses_models else request
        if p.uses_models:
            placing = one_actor_per_node(node_ids, p.initial)
            if placing is not None:
                common["ray_remote_args_fn"] = placing
            with warnings.catch_warnings():
                # Ray marks ray_remote_args_fn deprecated (to be removed in 2.64); pyproject pins 2.60, where it is
                # the one hook that gives each actor of a pool its own placement
                warnings.filterwarnings("ignore", message=".*ray_remote_args_fn.*")
                ds = ds.map_batches(StageActor,
                                    fn_constructor_kwargs=dict(stage_name=p.name, params=p.params, ctx=p.ctx,
                                                               run_id=run_id, memory_gb=r.memory_gb),
                                    # one batch at a time per actor: a model actor works through its batch anyway,
                                    # so a batch queued behind it would wait while another actor of the pool is idle
                                    compute=ray.data.ActorPoolStrategy(min_size=r.concurrency[0],
                                                                       max_size=int(r.concurrency[1]),
                                                                       initial_size=p.initial,
                                                                       max_tasks_in_flight_per_actor=1),
                                    **common)
        else:
            ds = ds.map_batches(run_stage_task, fn_kwargs=dict(stage_name=p.name, params=p.params, ctx=p.ctx,
                                                               run_id=run_id, memory_gb=r.memory_gb), **common)
    if pack is not None:
        extra = {"memory": int(pack.memory_gb * 2**30)} if pack.memory_gb else {}
        ds = ds.map_batches(run_pack_task, fn_kwargs=dict(store=pack.store, manifest_name=pack.manifest_name,
                                                          fps=pack.fps, audio_rate=pack.audio_rate,
                                                          shard_max_samples=pack.shard_max_samples,
                                                          shard_max_bytes=pack.shard_max_bytes),
                            batch_size=pack.shard_max_samples, batch_format="numpy", num_cpus=pack.num_cpus, **extra)
    return ds


# Environment variables the workers need from the driver (fault injection for tests, see docs/operations.md).
# The object store's endpoint (not its credentials: each node has its own) for an s3:// output or input.
PASS_ENV = ("CURATION_FAULTS", "CURATION_FAULTS_DIR", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3")


def init_ray(address: str | None, num_cpus: int | None = None) -> None:
    import ray

    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS") or None
    # Workers must import the project the same way as the driver (an editable install or a checkout).
    root = str(Path(__file__).resolve().parents[2])
    env_vars = {"PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    env_vars.update({k: os.environ[k] for k in PASS_ENV if k in os.environ})
    env = {"env_vars": env_vars}
    if address:
        ray.init(address=address, runtime_env=env, log_to_driver=True)
    else:
        # "local": always a new Ray of this process, never a cluster someone else started on this machine
        # with `ray start` (ray.init() with no address would attach to that one).
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, runtime_env=env, log_to_driver=True)


def _stage_of_lost(run_id: str, source_key: str) -> str | None:
    """The stage a lost source's clips were last started in (from the attempt log), if any."""
    try:
        from ray.experimental import internal_kv

        keys = internal_kv._internal_kv_list(b"", namespace=f"talkcurate-{run_id}")
    except Exception:
        return None
    for k in keys:
        stage, _, key = k.decode().partition("/")
        if key.startswith(source_key):
            return stage
    return None


@dataclass
class StreamStats:
    """What the driver received: records and their serialised bytes (metadata only when the workers write
    the shards), against the bytes of the shards the workers wrote."""
    records: int = 0
    bytes_received: int = 0


def stream_into(committer: Committer, records: list[ClipRecord], plans: list[StagePlan], run_id: str,
                pack: PackPlan | None = None, stats: StreamStats | None = None) -> None:
    """Run the plan over `records` and hand every finished record to the committer as it arrives.

    A source whose records Ray lost (a block dropped after its retries, see build_dataset) is run again on
    its own, once; one still lost after that is rejected as a whole with `error:<stage>`."""
    stats = stats if stats is not None else StreamStats()
    pending = {r.source: r for r in records}
    seen: set[str] = set()
    for attempt in (1, 2):
        if not pending:
            break
        ds = build_dataset(list(pending.values()), plans, run_id, pack)
        for batch in ds.iter_batches(batch_size=1, batch_format="numpy", prefetch_batches=2):
            for b in batch["rec"]:
                stats.records += 1
                stats.bytes_received += len(b)
                rec = ClipRecord.from_bytes(b)
                if rec.key in seen:  # delivered twice (a retried task): keep the first
                    continue
                seen.add(rec.key)
                committer.add(rec)
                progress.record(rec)
                if committer.is_complete(rec.source):
                    pending.pop(rec.source, None)
        if pending:
            for rec in committer.discard(list(pending)):
                seen.discard(rec.key)
            log.warning("%d source(s) lost by Ray (a batch failed after its retries)%s: %s", len(pending),
                        ", running them again" if attempt == 1 else "", ", ".join(sorted(pending)[:5]))
    for src, rec in pending.items():
        stage = _stage_of_lost(run_id, rec.key) or "pipeline"
        rec.reject(stage, f"error:{stage}", "the source's batch failed twice in Ray (workers died); see the driver log")
        committer.add(rec)


def _check_manifest_matches(out: OutputDir, manifest: Manifest) -> None:
    """The output's manifest.yaml (on its store: local or an object store) against this run's manifest."""
    text = manifest.text or Path(manifest.source_path).read_text(encoding="utf-8")  # resolved if it extends one
    if out.store.exists("manifest.yaml"):
        import yaml

        if yaml.safe_load(out.store.read("manifest.yaml").decode("utf-8")) != yaml.safe_load(text):
            raise RunError(f"{out.uri} was made with a different manifest ({out.uri}/manifest.yaml); use a new "
                           f"--output or the same manifest to resume")
    else:
        out.store.write("manifest.yaml", text.encode())


def _windows(sources, done: set[str], size: int, limit: int | None, counts: dict):
    """The listing's sources not yet finished, in lists of `size`, read lazily (the driver holds one window),
    at most `limit` in all; counts["skipped"]: the finished ones passed over."""
    window: list[tuple[str, str | None]] = []
    taken = 0
    for src in sources:
        if src[0] in done:
            counts["skipped"] = counts.get("skipped", 0) + 1
            continue
        if limit is not None and taken >= limit:
            break
        window.append(src)
        taken += 1
        if len(window) >= size:
            yield window
            window = []
    if window:
        yield window


def _external_cluster(address: str | None) -> bool:
    return (address or os.environ.get("RAY_ADDRESS") or "local") != "local"


@dataclass
class RunResult:
    output: str
    new_sources: int
    skipped_sources: int
    committed_clips: int
    wall_s: float
    funnel: dict
    recovered: dict
    windows: int = 0
    driver_bytes_received: int = 0
    shard_bytes: int = 0


@dataclass
class Processed:
    """What `process_windows` did: windows and sources run, what the driver received, the committer."""
    committer: Committer
    stats: StreamStats
    windows: int = 0
    sources: int = 0


def process_windows(out: OutputDir, m: Manifest, wdir: str, windows, *, score_only: bool = False,
                    address: str | None = None, num_cpus: int | None = None, only_stages: list[str] | None = None,
                    on_window=None) -> Processed:
    """Run the manifest's stages (or `only_stages` of them) over `windows`, an iterator of lists of source
    records (ClipRecord: a source to start from, or the candidate clips of one source with everything the
    stages before decided), and commit every source into `out` as its records come back. Ray starts with the
    first window; a window's sources are all committed before the next is read (exact resume)."""
    committer = Committer(out, m.name, m.video.fps, m.video.audio_rate, m.output.shard_max_samples,
                          m.output.shard_max_bytes, m.output.commit_every_sources, write_shards=not score_only,
                          keep_data=score_only)
    write = m.stage("write")
    pack = None if score_only else PackPlan(out.store, m.name, m.video.fps, m.video.audio_rate,
                                            m.output.shard_max_samples, m.output.shard_max_bytes,
                                            # a pack task holds a batch's bytes twice (the clips, the tar)
                                            num_cpus=write.resources.num_cpus,
                                            memory_gb=2 * m.output.shard_max_bytes / 2**30)
    done = Processed(committer, StreamStats())
    plans = run_id = None
    try:
        for records in windows:
            if plans is None:
                import ray

                init_ray(address, num_cpus)
                plans = plan_stages(m, wdir, score_only, ray.cluster_resources(), max(1, len(cpu_node_ids())))
                if only_stages is not None:
                    plans = [pl for pl in plans if pl.name in only_stages]
                run_id = uuid.uuid4().hex[:16]
            n_src = len({r.source for r in records})
            if on_window is not None:
                on_window(done.windows, records)
            progress.add_sources(n_src)
            done.windows += 1
            done.sources += n_src
            stream_into(committer, records, plans, run_id, pack, done.stats)
            committer.commit()  # a window's sources all committed before the next is read
        committer.close()
    finally:
        if run_id:
            with contextlib.suppress(Exception):
                from ray.experimental import internal_kv

                internal_kv._internal_kv_del(b"", del_by_prefix=True, namespace=f"talkcurate-{run_id}")
    if run_id:
        # Shards of tasks whose results never reached a commit (a retried task's first try, a lost block).
        orphans = out.delete_orphan_shards()
        if orphans:
            log.info("removed %d shard(s) of retried or lost tasks", len(orphans))
    return done


def run(input_path: str, output: str, manifest: str | Manifest | None = None, address: str | None = None,
        limit: int | None = None, score_only: bool = False, weights: str | None = None,
        num_cpus: int | None = None, on_window=None) -> RunResult:
    """`on_window(n, sources)`, if given, is called as each window starts (benchmarks: the driver's memory)."""
    t0 = time.time()
    m = manifest if isinstance(manifest, Manifest) else load_manifest(manifest)
    wdir = absolute_path(str(weights_dir(weights)))
    preflight(m, wdir, output)  # tools, encoders, weights, output location: before anything is written
    # On an existing cluster a relative input directory is made absolute (on a local Ray the workers share the
    # driver's working directory; sources there keep the paths, and so the keys, they always had).
    listing = iter_inputs(absolute_path(input_path) if _external_cluster(address) else input_path)
    first = next(listing, None)  # a missing input or a bad list file fails here, before any work
    out = OutputDir(output)  # made absolute: the workers of a cluster write shards there
    out.create()
    _check_manifest_matches(out, m)
    thresholds.write(out, m)  # audit/thresholds.json: every decision of the manifest, for the report
    recovered = out.recover()
    sweep_stale_temp_dirs()
    done = out.finished_sources()
    run_rec = runlog.begin(out, t0, None)  # sources are counted window by window (the listing streams)
    counts: dict = {}

    def chain():
        if first is not None:
            yield first
        yield from listing

    windows = ([ClipRecord.for_source(p, a) for p, a in w]
               for w in _windows(chain(), done, m.run.window_sources, limit, counts))
    res = process_windows(out, m, wdir, windows, score_only=score_only, address=address, num_cpus=num_cpus,
                          on_window=None if on_window is None else (
                              lambda n, recs: on_window(n, [(r.source, r.audio_path) for r in recs])))
    committer, stats = res.committer, res.stats
    skipped = counts.get("skipped", 0)
    wall = time.time() - t0
    run_rec.end({"new_sources": res.sources, "skipped_sources": skipped, "score_only": score_only,
                 "address": address or os.environ.get("RAY_ADDRESS") or "local", "manifest": m.name,
                 "windows": res.windows, "driver_records": stats.records, "driver_bytes_received": stats.bytes_received,
                 "shard_bytes": committer.shard_bytes, "argv": sys.argv})
    fun = consolidate(output if out.remote else out.root, [s.name for s in m.enabled_stages()])
    return RunResult(out.uri, res.sources, skipped, committer.committed_clips, wall, fun, recovered, res.windows,
                     stats.bytes_received, committer.shard_bytes)
