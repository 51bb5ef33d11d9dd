"""An audio-driven video Diffusion Transformer in pixel space, in the style of facebookresearch/DiT.

Input: a noisy clip x_t (B, 3, T, H, W) in [-1, 1], the flow time t (B,), a reference frame (B, 3, H, W)
and log-mel audio (B, 4T, n_mels). Output: the flow velocity, shaped like x_t.

- x-prediction (as JiT, Li & He 2025): the network regresses the clean clip, as an offset from the
  reference frame, and the velocity follows from it: v = (x_t - x_0) / t. A token (2 x 4 x 4 patch of 6
  channels: 192 numbers) is wider than a small model's width, so the noise in x_t cannot pass through the
  network; predicting v (which holds that noise) directly left the tiny model worse than repeating the
  reference. Predicting the clean clip only needs the low-dimensional motion, and an untrained network
  (zero output) already gives the reference frame repeated.
- The reference frame is concatenated to every noisy frame on the channel axis (6 input channels), then a
  3D patch embedding (Conv3d, kernel = stride = patch) turns the clip into T/pt * H/ph * W/pw tokens.
- Self-attention uses 3D rotary position embedding (head channels split across time, height and width).
- The flow time conditions every block by adaLN-Zero (shift, scale and gate regressed from t).
- Audio enters by cross-attention in every `audio_every`-th block only (sparse injection, as TalkVerse).
  Audio is grouped into one token per video frame; cross-attention uses 1D rotary on time, so a video
  token sees the audio around its own frames first. `audio_keep=False` swaps in a learned null context:
  the unconditional branch of classifier-free guidance.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .configs import MEL_PER_FRAME, Config

T_MIN = 0.05  # the velocity divides by max(t, T_MIN): bounded near the data end (as JiT)
# What the network's output means, stored in every checkpoint: weights trained for another parametrisation
# (the earlier plain velocity output) would load without error and sample noise, so loading refuses them.
PREDICTION = "x0-around-reference"


def check_prediction(ckpt: dict, path: str) -> None:
    """Refuse a checkpoint whose output parametrisation is not this model's (PREDICTION)."""
    got = ckpt.get("prediction", "velocity (before x0-around-reference)")
    if got != PREDICTION:
        raise ValueError(f"{path}: trained for the output {got!r}, this model predicts {PREDICTION!r}; "
                         f"train it again (curation train)")


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale[:, None]) + shift[:, None]


def rope_angles(pos: torch.Tensor, dims: list[int], theta: float = 10000.0) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin tables (L, sum(dims)/2) for positions `pos` (L, len(dims)): axis i rotates dims[i] channels."""
    angles = []
    for i, d in enumerate(dims):
        inv_freq = theta ** (-torch.arange(0, d, 2, dtype=torch.float32, device=pos.device) / d)
        angles.append(pos[:, i, None].float() * inv_freq)
    a = torch.cat(angles, dim=-1)
    return a.cos(), a.sin()


def apply_rope(x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """Rotate channel pairs of x (B, heads, L, D) by the angles in `rope` (each (L, D/2))."""
    cos, sin = rope
    x1, x2 = x.unflatten(-1, (-1, 2)).unbind(-1)
    return torch.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).flatten(-2)


class Attention(nn.Module):
    """Multi-head attention with QK RMS-norm and rotary embedding; self-attention when ctx is x."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.q_norm = nn.RMSNorm(dim // heads, eps=1e-6)
        self.k_norm = nn.RMSNorm(dim // heads, eps=1e-6)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, ctx: torch.Tensor, rope_q, rope_k) -> torch.Tensor:
        q = self.q(x).unflatten(-1, (self.heads, -1)).transpose(1, 2)
        k, v = self.kv(ctx).unflatten(-1, (2, self.heads, -1)).permute(2, 0, 3, 1, 4)
        q = apply_rope(self.q_norm(q.float()), rope_q).to(v.dtype)  # norm and rotation in fp32
        k = apply_rope(self.k_norm(k.float()), rope_k).to(v.dtype)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).flatten(2))


class TimestepEmbedder(nn.Module):
    """Flow time t in [0, 1] -> vector: sinusoidal features of 1000 t, then an MLP (as DiT)."""

    def __init__(self, dim: int, freq_dim: int = 256):
        super().__init__()
        self.freq_dim = freq_dim
        self.mlp = nn.Sequential(nn.Linear(freq_dim, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        half = self.freq_dim // 2
        freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
        args = 1000.0 * t.float()[:, None] * freqs[None]
        return self.mlp(torch.cat([args.cos(), args.sin()], dim=-1))


class AudioEncoder(nn.Module):
    """Log-mel (B, 4T, n_mels) -> one token per video frame (B, T, dim)."""

    def __init__(self, n_mels: int, dim: int):
        super().__init__()
        self.net = nn.Sequential(nn.LayerNorm(MEL_PER_FRAME * n_mels), nn.Linear(MEL_PER_FRAME * n_mels, dim),
                                 nn.GELU(approximate="tanh"), nn.Linear(dim, dim))

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        b, m, n = mel.shape
        return self.net(mel.reshape(b, m // MEL_PER_FRAME, MEL_PER_FRAME * n))


class DiTBlock(nn.Module):
    """adaLN-Zero transformer block; with `cross`, audio cross-attention between attention and MLP."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float, cross: bool):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(dim, heads)
        self.norm_cross = nn.LayerNorm(dim, eps=1e-6) if cross else None
        self.cross = Attention(dim, heads) if cross else None
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, dim))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))

    def forward(self, x, c, rope, audio, rope_time, rope_audio):
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.adaLN_modulation(c).chunk(6, dim=-1)
        h = modulate(self.norm1(x), shift_msa, scale_msa)
        x = x + gate_msa[:, None] * self.attn(h, h, rope, rope)
        if self.cross is not None:
            x = x + self.cross(self.norm_cross(x), audio, rope_time, rope_audio)
        return x + gate_mlp[:, None] * self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp))


class FinalLayer(nn.Module):
    def __init__(self, dim: int, out_dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(dim, out_dim)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim))

    def forward(self, x, c):
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=-1)
        return self.linear(modulate(self.norm(x), shift, scale))


class DiT(nn.Module):
    def __init__(self, cfg: Config):
        super().__init__()
        self.patch = cfg.patch
        self.heads = cfg.heads
        self.x_embed = nn.Conv3d(6, cfg.dim, kernel_size=cfg.patch, stride=cfg.patch)
        self.t_embed = TimestepEmbedder(cfg.dim)
        self.audio_embed = AudioEncoder(cfg.n_mels, cfg.dim)
        self.null_audio = nn.Parameter(torch.zeros(1, 1, cfg.dim))
        self.blocks = nn.ModuleList([DiTBlock(cfg.dim, cfg.heads, cfg.mlp_ratio, cross=i % cfg.audio_every == 0)
                                     for i in range(cfg.depth)])
        self.final = FinalLayer(cfg.dim, 3 * math.prod(cfg.patch))
        self._init_weights()

    def _init_weights(self):
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.xavier_uniform_(self.x_embed.weight.view(self.x_embed.weight.shape[0], -1))
        nn.init.zeros_(self.x_embed.bias)
        nn.init.normal_(self.null_audio, std=0.02)
        for lin in (self.t_embed.mlp[0], self.t_embed.mlp[2]):
            nn.init.normal_(lin.weight, std=0.02)
        # adaLN-Zero: every block starts as the identity, the output as zero; audio enters from zero.
        for blk in self.blocks:
            nn.init.zeros_(blk.adaLN_modulation[-1].weight)
            nn.init.zeros_(blk.adaLN_modulation[-1].bias)
            if blk.cross is not None:
                nn.init.zeros_(blk.cross.proj.weight)
        for lin in (self.final.adaLN_modulation[-1], self.final.linear):
            nn.init.zeros_(lin.weight)
            nn.init.zeros_(lin.bias)

    def _ropes(self, grid: tuple[int, int, int], n_audio: int, device):
        """3D rotary for the video tokens, and 1D (time) rotary for video and audio in cross-attention.
        Time is measured in video frames: a token spanning frames [p*pt, p*pt+pt) sits at their centre."""
        pt, ph, pw = self.patch
        head = self.x_embed.out_channels // self.heads
        dt = 2 * (head // 8)
        dims = [dt, (head - dt) // 2, (head - dt) // 2]
        tt, hh, ww = torch.meshgrid(*(torch.arange(n, device=device, dtype=torch.float32) for n in grid),
                                    indexing="ij")
        time = tt * pt + (pt - 1) / 2
        pos = torch.stack([time, hh, ww], dim=-1).reshape(-1, 3)
        audio_time = torch.arange(n_audio, device=device, dtype=torch.float32)[:, None]
        return rope_angles(pos, dims), rope_angles(pos[:, :1], [head]), rope_angles(audio_time, [head])

    def forward(self, x: torch.Tensor, t: torch.Tensor, ref: torch.Tensor, mel: torch.Tensor,
                audio_keep: torch.Tensor | None = None) -> torch.Tensor:
        b, _, frames, height, width = x.shape
        pt, ph, pw = self.patch
        grid = (frames // pt, height // ph, width // pw)
        h = self.x_embed(torch.cat([x, ref[:, :, None].expand_as(x)], dim=1)).flatten(2).transpose(1, 2)
        c = self.t_embed(t)
        audio = self.audio_embed(mel)
        if audio_keep is not None:
            audio = torch.where(audio_keep[:, None, None], audio, self.null_audio.to(audio.dtype))
        rope, rope_time, rope_audio = self._ropes(grid, audio.shape[1], x.device)
        for blk in self.blocks:
            h = blk(h, c, rope, audio, rope_time, rope_audio)
        out = self.final(h, c)  # (B, L, pt*ph*pw*3)
        out = out.reshape(b, *grid, pt, ph, pw, 3).permute(0, 7, 1, 4, 2, 5, 3, 6)
        x0 = ref[:, :, None] + out.reshape(b, 3, frames, height, width)  # the clean clip
        return (x - x0) / t.float().clamp(min=T_MIN).view(b, 1, 1, 1, 1)
