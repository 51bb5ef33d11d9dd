"""Model, data and training settings for the bundled audio-driven video DiT: one flat dataclass per size.

`tiny` trains on two CPU cores in seconds (tests); `small` and `base` are GPU sizes. A checkpoint stores
`asdict(config)`, so a run is always rebuilt from exactly the settings it was trained with."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

FPS = 25
AUDIO_RATE = 16000
MEL_PER_FRAME = 4  # hop 160 at 16 kHz: 4 mel frames per 25 fps video frame


# Keys older checkpoints may hold that no longer mean anything (the streaming loader's shuffle buffer).
RETIRED_KEYS = {"shuffle_buffer"}


@dataclass(frozen=True)
class Config:
    name: str
    # data
    resolution: int  # square training frames, centre-cropped and scaled
    frames: int  # video frames per training window
    n_mels: int = 80
    # model
    patch: tuple[int, int, int] = (2, 4, 4)  # frames x height x width per token
    dim: int = 64
    depth: int = 4
    heads: int = 4
    mlp_ratio: float = 4.0
    audio_every: int = 2  # cross-attention to audio in blocks 0, k, 2k, ...
    # flow matching
    audio_dropout: float = 0.1  # share of training samples without audio, for classifier-free guidance
    sample_steps: int = 25
    cfg_scale: float = 3.0
    # training
    batch_size: int = 4
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup_steps: int = 20
    steps: int = 1000
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    num_workers: int = 1  # loader processes reading the training view (0: in the training process)
    hflip: float = 0.0  # share of training samples mirrored left-right (clip and reference together)
    seed: int = 0
    log_every: int = 10
    ckpt_every: int = 500

    def __post_init__(self):
        pt, ph, pw = self.patch
        if self.frames % pt or self.resolution % ph or self.resolution % pw:
            raise ValueError(f"{self.name}: patch {self.patch} must divide frames x resolution")
        if self.dim % self.heads or (self.dim // self.heads) % 16:
            raise ValueError(f"{self.name}: head size dim/heads must be a multiple of 16 (3D rotary split)")
        if self.resolution % 2:
            raise ValueError(f"{self.name}: resolution must be even (H.264 yuv420p)")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Config:
        known = {f.name for f in fields(cls)}
        d = {k: v for k, v in d.items() if k not in RETIRED_KEYS}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown config keys: {sorted(unknown)}")
        d = dict(d)
        d["patch"] = tuple(d.get("patch", cls.patch))
        return cls(**d)


CONFIGS: dict[str, Config] = {
    "tiny": Config(name="tiny", resolution=32, frames=8, patch=(2, 4, 4), dim=64, depth=4, heads=4,
                   batch_size=4, lr=1e-3, warmup_steps=20, steps=300, ema_decay=0.99, ckpt_every=100),
    "small": Config(name="small", resolution=64, frames=16, patch=(2, 4, 4), dim=384, depth=12, heads=6,
                    batch_size=32, lr=3e-4, warmup_steps=1000, steps=100_000, ema_decay=0.9999,
                    num_workers=4, hflip=0.5, log_every=50, ckpt_every=2000),
    "base": Config(name="base", resolution=128, frames=16, patch=(2, 8, 8), dim=768, depth=12, heads=12,
                   batch_size=32, lr=1e-4, warmup_steps=2000, steps=300_000, ema_decay=0.9999,
                   num_workers=6, hflip=0.5, log_every=50, ckpt_every=2000),
}


def get_config(name: str) -> Config:
    try:
        return CONFIGS[name]
    except KeyError:
        raise ValueError(f"unknown config {name!r}; choose one of {', '.join(CONFIGS)}") from None
