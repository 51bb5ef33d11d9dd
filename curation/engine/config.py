"""Manifests: the ordered list of stages with their thresholds and resources, validated before any work.

A manifest is YAML (loaded with yaml.safe_load). Every stage section is checked against the stage's own
pydantic `Params` model, so a wrong key or type is a clear error naming the file and the key.

Inheritance: `extends: NAME` (a manifest name or a path relative to the file) takes that manifest and
changes only what this one names: top-level mappings are merged key by key, and each entry of `stages`
is merged into the parent's stage of the same name (its `params` and `resources` key by key); the stage
order is the parent's. The result is validated like any manifest, and is what an output directory's
manifest.yaml records."""

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

    # Filled after validation: stage name -> validated params object; the file it came from; the YAML text
    # of the whole manifest (the file's own text, or the resolved one for a manifest that extends another).
    _params: dict[str, BaseModel] = PrivateAttr(default_factory=dict)
    _source_path: str = PrivateAttr(default="")
    _text: str = PrivateAttr(default="")

    @property
    def source_path(self) -> str:
        return self._source_path

    @property
    def text(self) -> str:
        """The manifest as one self-contained YAML document (what an output directory keeps)."""
        return self._text

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


def resolve_manifest_path(name_or_path: str | None, relative_to: Path | None = None) -> Path:
    if not name_or_path:
        return MANIFEST_DIR / "default.yaml"
    p = Path(name_or_path)
    if relative_to is not None and not p.is_absolute() and (relative_to / p).is_file():
        return relative_to / p
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
    raw, text = _read_resolved(path, [])
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
        cls.Params.validate_checks()
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
    m._text = text
    return m


def _read_yaml(path: Path) -> tuple[dict, str]:
    try:
        text = path.read_text(encoding="utf-8")
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ManifestError(f"{path}: not valid YAML: {e}".replace("\n", " ")) from None
    except OSError as e:
        raise ManifestError(f"{path}: cannot read: {e}") from None
    if not isinstance(raw, dict):
        raise ManifestError(f"{path}: expected a mapping at the top level")
    return raw, text


def _read_resolved(path: Path, chain: list[Path]) -> tuple[dict, str]:
    """The manifest at `path` with its `extends` chain applied, and its YAML text (the file's own text when
    it extends nothing)."""
    raw, text = _read_yaml(path)
    if "extends" not in raw:
        return raw, text
    parent_name = raw.pop("extends")
    if not isinstance(parent_name, str) or not parent_name:
        raise ManifestError(f"{path}: extends: expected a manifest name or path")
    try:
        parent_path = resolve_manifest_path(parent_name, relative_to=path.parent)
    except ManifestError as e:
        raise ManifestError(f"{path}: extends: {e}") from None
    if parent_path.resolve() in [p.resolve() for p in (*chain, path)]:
        raise ManifestError(f"{path}: extends: {parent_name} extends this manifest again (a cycle)")
    parent, _ = _read_resolved(parent_path, [*chain, path])
    merged = _merge(parent, raw, path, parent_path)
    header = f"# {path.name} resolved: extends {parent_path.name}\n"
    return merged, header + yaml.safe_dump(merged, sort_keys=False, allow_unicode=True, width=120)


def _merge_dicts(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge_dicts(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _merge(parent: dict, child: dict, path: Path, parent_path: Path) -> dict:
    out = _merge_dicts({k: v for k, v in parent.items() if k != "stages"},
                       {k: v for k, v in child.items() if k != "stages"})
    stages = [dict(s) if isinstance(s, dict) else s for s in parent.get("stages") or []]
    if "stages" in child:
        if not isinstance(child["stages"], list):
            raise ManifestError(f"{path}: stages: expected a list")
        names = [s.get("name") if isinstance(s, dict) else None for s in stages]
        for i, s in enumerate(child["stages"]):
            if not isinstance(s, dict) or "name" not in s:
                raise ManifestError(f"{path}: stages[{i}].name: every stage entry names its stage")
            if s["name"] not in names:
                raise ManifestError(f"{path}: stages[{i}].name: stage '{s['name']}' is not in {parent_path.name} "
                                    f"(a manifest that extends another changes its stages, in its order)")
            j = names.index(s["name"])
            stages[j] = _merge_dicts(stages[j], s)
    out["stages"] = stages
    return out
