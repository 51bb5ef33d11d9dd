"""Pipeline assembly: the manifest's stages as a Ray Data plan, streamed into the committer.

Local Ray on this machine by default; an existing cluster with `address` (or RAY_ADDRESS), with no code
change. Stages without models run as Ray tasks; stages with models run as actor pools, so each actor loads
its models once. Rows carry one serialised ClipRecord each (time spans, boxes, small arrays, and at the end
the encoded clip bytes), never decoded video."""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from curation.audit import consolidate
from curation.config import Manifest, Resources, load_manifest
from curation.ingest import list_inputs
from curation.output import Committer, OutputDir
from curation.record import ClipRecord
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


def run_stage_task(batch: dict, stage_name: str, params: dict, ctx: StageContext) -> dict:
    """A stage without models, as a Ray task: cheap to build per batch."""
    cls = stage_class(stage_name)
    stage = cls(cls.Params.model_validate(params), ctx)
    return _batch(stage.process(_records(batch)))


class StageActor:
    """A stage with models, as a Ray actor: built (models loaded) once, then fed batches."""

    def __init__(self, stage_name: str, params: dict, ctx: StageContext):
        cls = stage_class(stage_name)
        self.stage = cls(cls.Params.model_validate(params), ctx)

    def __call__(self, batch: dict) -> dict:
        return _batch(self.stage.process(_records(batch)))


# ---------------------------------------------------------------------------------------------------

@dataclass
class StagePlan:
    name: str
    params: dict
    resources: Resources
    uses_models: bool
    ctx: StageContext


def check_weights(manifest: Manifest, wdir: str) -> None:
    """Every weight file every enabled stage needs, checked before any work starts."""
    for spec in manifest.enabled_stages():
        cls = stage_class(spec.name)
        params = manifest.params(spec.name)
        for name in cls.required_weights(params):
            resolve(name, wdir, stage=spec.name)
        if hasattr(cls, "check_startup"):
            cls.check_startup(params, wdir)


def plan_stages(manifest: Manifest, wdir: str, score_only: bool, cluster: dict) -> list[StagePlan]:
    """Per-stage resources from the manifest, fitted to the cluster: GPU requests are dropped where the
    cluster has no GPU, and CPU requests are scaled down when the stages' minimum pools would not all fit
    at once (on a 2-core machine a whole CPU per actor would starve the rest of the pipeline)."""
    cpus = float(cluster.get("CPU", 1.0))
    gpus = float(cluster.get("GPU", 0.0))
    plans = []
    for spec in manifest.enabled_stages():
        cls = stage_class(spec.name)
        res = spec.resources.model_copy()
        if res.num_gpus > 0 and gpus <= 0:
            log.warning("stage %s asks for %.2g GPU but the cluster has none: running on CPU", spec.name, res.num_gpus)
            res.num_gpus = 0.0
        ctx = StageContext(weights_dir=wdir, fps=manifest.video.fps, audio_rate=manifest.video.audio_rate,
                           score_only=score_only, timeout_s=res.timeout_s, video=manifest.video.model_dump(),
                           use_gpu=res.num_gpus > 0)
        plans.append(StagePlan(spec.name, manifest.params(spec.name).model_dump(), res, cls.uses_models, ctx))
    demand = sum(p.resources.num_cpus * (p.resources.concurrency[0] if p.uses_models else 1) for p in plans)
    if demand > cpus:
        factor = cpus / demand
        log.warning("stages ask for %.2f CPUs at minimum, the cluster has %.0f: scaling CPU requests by %.2f",
                    demand, cpus, factor)
        for p in plans:
            p.resources.num_cpus = round(p.resources.num_cpus * factor, 3)
    return plans


def build_dataset(records: list[ClipRecord], plans: list[StagePlan]):
    import ray

    ds = ray.data.from_items([{"key": r.key, "rec": r.to_bytes()} for r in records],
                             override_num_blocks=max(1, len(records)))
    for p in plans:
        r = p.resources
        common = dict(batch_size=r.batch_size, batch_format="numpy", num_cpus=r.num_cpus)
        if r.num_gpus:
            common["num_gpus"] = r.num_gpus
        if p.uses_models:
            ds = ds.map_batches(StageActor, fn_constructor_kwargs=dict(stage_name=p.name, params=p.params, ctx=p.ctx),
                                compute=ray.data.ActorPoolStrategy(min_size=r.concurrency[0], max_size=r.concurrency[1]),
                                **common)
        else:
            ds = ds.map_batches(run_stage_task, fn_kwargs=dict(stage_name=p.name, params=p.params, ctx=p.ctx),
                                **common)
    return ds


def init_ray(address: str | None, num_cpus: int | None = None) -> None:
    import ray

    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS") or None
    # Workers must import the project the same way as the driver (an editable install or a checkout).
    root = str(Path(__file__).resolve().parent.parent)
    env = {"env_vars": {"PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}}
    if address:
        ray.init(address=address, runtime_env=env, log_to_driver=True)
    else:
        ray.init(num_cpus=num_cpus, include_dashboard=False, runtime_env=env, log_to_driver=True)


def _check_manifest_matches(out: OutputDir, manifest: Manifest) -> None:
    saved = out.root / "manifest.yaml"
    text = Path(manifest.source_path).read_text(encoding="utf-8")
    if saved.exists():
        import yaml

        if yaml.safe_load(saved.read_text(encoding="utf-8")) != yaml.safe_load(text):
            raise RunError(f"{out.root} was made with a different manifest ({saved}); use a new --output "
                           f"or the same manifest to resume")
    else:
        out.write_atomic(saved, text.encode())


@dataclass
class RunResult:
    output: str
    new_sources: int
    skipped_sources: int
    committed_clips: int
    wall_s: float
    funnel: dict
    recovered: dict


def run(input_path: str, output: str, manifest: str | Manifest | None = None, address: str | None = None,
        limit: int | None = None, score_only: bool = False, weights: str | None = None,
        num_cpus: int | None = None) -> RunResult:
    t0 = time.time()
    m = manifest if isinstance(manifest, Manifest) else load_manifest(manifest)
    wdir = str(weights_dir(weights))
    check_weights(m, wdir)
    sources = list_inputs(input_path)
    out = OutputDir(output)
    out.create()
    _check_manifest_matches(out, m)
    recovered = out.recover()
    done = out.finished_sources()
    todo = [s for s in sources if s[0] not in done]
    if limit is not None:
        todo = todo[:limit]
    records = [ClipRecord.for_source(p, a) for p, a in todo]
    committer = Committer(out, m.name, m.video.fps, m.video.audio_rate, m.output.shard_max_samples,
                          m.output.shard_max_bytes, m.output.commit_every_sources, write_shards=not score_only)
    if records:
        import ray

        init_ray(address, num_cpus)
        plans = plan_stages(m, wdir, score_only, ray.cluster_resources())
        ds = build_dataset(records, plans)
        for batch in ds.iter_batches(batch_size=1, batch_format="numpy", prefetch_batches=2):
            for rec in _records(batch):
                committer.add(rec)
        committer.close()
    wall = time.time() - t0
    with open(out.audit / "runs.jsonl", "a", encoding="utf-8") as f:
        f.write(json.dumps({"started": t0, "wall_s": wall, "new_sources": len(records),
                            "skipped_sources": len(sources) - len(todo), "score_only": score_only,
                            "address": address or os.environ.get("RAY_ADDRESS") or "local",
                            "manifest": m.name, "argv": sys.argv}) + "\n")
    fun = consolidate(output, [s.name for s in m.enabled_stages()])
    return RunResult(str(out.root), len(records), len(sources) - len(todo), committer.committed_clips, wall, fun,
                     recovered)
