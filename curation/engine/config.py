"""Manifests: the ordered list of stages with their thresholds and resources, validated before any work.

A manifest is YAML (loaded with yaml.safe_load). Every stage section is checked against the stage's own
pydantic `Params` model, so a wrong key or type is a clear error naming the file and the key."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator

MANIFEST_DIR = Path(__file__).resolve().parents[2] / "manifests"


class ManifestError(ValueError):
    """A manifest that cannot be used; the message names the file and the key."""


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Resources(Strict):
    """What one stage asks of the cluster. `num_cpus` is per task/actor; fractions are allowed so that
    several stages fit on a small machine. `concurrency` is the actor pool size (min, max) for model stages."""

    num_cpus: float = Field(1.0, ge=0.0)
    num_gpus: float = Field(0.0, ge=0.0)
    batch_size: int = Field(4, ge=1)
    concurrency: tuple[int, int] = (1, 1)
    timeout_s: float = Field(600.0, gt=0.0, description="per-clip time limit for this stage")

    @field_validator("concurrency", mode="before")
    @classmethod
    def _conc(cls, v: Any) -> Any:
        if isinstance(v, int):
            return (v, v)
        return v


class StageSpec(Strict):
    name: str
    enabled: bool = True
    params: dict[str, Any] = Field(default_factory=dict)
    resources: Resources = Field(default_factory=Resources)


class VideoSpec(Strict):
    fps: float = Field(25.0, gt=0)
    audio_rate: int = Field(16000, gt=0)
    crf: int = Field(20, ge=0, le=51)
    preset: str = "veryfast"
    max_side: int | None = Field(None, ge=16, description="clips written with their longer side at most this (None: source size)")


class OutputSpec(Strict):
    shard_max_samples: int = Field(256, ge=1)
    shard_max_bytes: int = Field(1_000_000_000, ge=1)
    commit_every_sources: int = Field(64, ge=1, description="commit audit rows at least this often")


class Manifest(Strict):
    name: str
    description: str = ""
    video: VideoSpec = Field(default_factory=VideoSpec)
    output: OutputSpec = Field(default_factory=OutputSpec)
    stages: list[StageSpec]

    # Filled after validation: stage name -> validated params object; the file it came from.
    _params: dict[str, BaseModel] = PrivateAttr(default_factory=dict)
    _source_path: str = PrivateAttr(default="")

    @property
    def source_path(self) -> str:
        return self._source_path

    def stage(self, name: str) -> StageSpec | None:
        for s in self.stages:
            if s.name == name:
                return s
        return None

    def params(self, name: str) -> Any:
        return self._params[name]

    def enabled_stages(self) -> list[StageSpec]:
        return [s for s in self.stages if s.enabled]


def _fmt_loc(prefix: str, loc: tuple) -> str:
    out = prefix
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _fmt_errors(path: str, prefix: str, err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        where = _fmt_loc(prefix, tuple(e["loc"]))
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown key"
        lines.append(f"{path}: {where}: {msg}")
    return "; ".join(lines)


def resolve_manifest_path(name_or_path: str | None) -> Path:
    if not name_or_path:
        return MANIFEST_DIR / "default.yaml"
    p = Path(name_or_path)
    if p.exists():
        return p
    named = MANIFEST_DIR / f"{name_or_path}.yaml"
    if named.exists():
        return named
    raise ManifestError(f"manifest not found: {name_or_path} (neither a file nor one of {sorted(x.stem for x in MANIFEST_DIR.glob('*.yaml'))})")


def load_manifest(name_or_path: str | None = None) -> Manifest:
    """Load, validate and return a manifest; raise ManifestError with one clear line on any problem."""
    from stages import stage_class  # local: stages import config

    path = resolve_manifest_path(name_or_path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise ManifestError(f"{path}: not valid YAML: {e}".replace("\n", " ")) from None
    except OSError as e:
        raise ManifestError(f"{path}: cannot read: {e}") from None
    if not isinstance(raw, dict):
        raise ManifestError(f"{path}: expected a mapping at the top level")
    try:
        m = Manifest.model_validate(raw)
    except ValidationError as e:
        raise ManifestError(_fmt_errors(str(path), "", e)) from None
    seen: set[str] = set()
    params: dict[str, BaseModel] = {}
    for i, spec in enumerate(m.stages):
        if spec.name in seen:
            raise ManifestError(f"{path}: stages[{i}].name: stage '{spec.name}' listed twice")
        seen.add(spec.name)
        try:
            cls = stage_class(spec.name)
        except KeyError as e:
            raise ManifestError(f"{path}: stages[{i}].name: {e.args[0]}") from None
        try:
            params[spec.name] = cls.Params.model_validate(spec.params)
        except ValidationError as e:
            raise ManifestError(_fmt_errors(str(path), f"stages[{i}].params", e)) from None
    for required in ("probe", "scenes", "write"):
        if required not in seen:
            raise ManifestError(f"{path}: stages: the '{required}' stage is required")
    order = [s.name for s in m.stages]
    if order[0] != "probe" or order[1] != "scenes" or order[-1] != "write":
        raise ManifestError(f"{path}: stages: must start with probe, scenes and end with write (got {order})")
    m._params = params
    m._source_path = str(path)
    return m
