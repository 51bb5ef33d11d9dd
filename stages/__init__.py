"""One module per stage. The registry maps a manifest stage name to its class, imported lazily so that
validating a manifest never pulls torch, mediapipe or open_clip into the driver."""

from __future__ import annotations

import importlib

REGISTRY: dict[str, str] = {
    "probe": "stages.probe:ProbeStage",
    "scenes": "stages.scenes:ScenesStage",
    "person": "stages.person:PersonStage",
    "quality": "stages.quality:QualityStage",
    "sync": "stages.sync:SyncStage",
    "skeleton": "stages.skeleton:SkeletonStage",
    "write": "stages.write:WriteStage",
}


def stage_class(name: str):
    if name not in REGISTRY:
        raise KeyError(f"unknown stage '{name}' (known: {', '.join(REGISTRY)})")
    mod, cls = REGISTRY[name].split(":")
    return getattr(importlib.import_module(mod), cls)
