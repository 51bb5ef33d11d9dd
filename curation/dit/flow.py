"""Rectified flow: x_t = (1 - t) x_0 + t noise; the model returns the velocity noise - x_0 (derived from its
estimate of x_0, see dit.py).

Training draws t from a logit-normal (as SD3) and drops the audio of `audio_dropout` of the samples, so
the same network gives the unconditional velocity that classifier-free guidance on audio needs. Sampling
integrates from noise (t = 1) to data (t = 0) with Euler steps."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def flow_loss(model, video: torch.Tensor, ref: torch.Tensor, mel: torch.Tensor, gen: torch.Generator,
              audio_dropout: float) -> torch.Tensor:
    """Mean squared velocity error on a clip batch in [-1, 1]; t, noise and dropout all come from `gen`."""
    b = video.shape[0]
    t = torch.sigmoid(torch.randn(b, device=video.device, generator=gen))
    noise = torch.randn(video.shape, device=video.device, generator=gen)
    keep = torch.rand(b, device=video.device, generator=gen) >= audio_dropout
    tb = t.view(b, 1, 1, 1, 1)
    x_t = (1 - tb) * video + tb * noise
    v = model(x_t, t, ref, mel, keep)
    return F.mse_loss(v.float(), noise - video)


@torch.no_grad()
def sample(model, ref: torch.Tensor, mel: torch.Tensor, frames: int, steps: int, cfg_scale: float,
           gen: torch.Generator) -> torch.Tensor:
    """Clips (B, 3, frames, H, W) in [-1, 1] for references (B, 3, H, W) and log-mel (B, 4*frames, n_mels).

    With cfg_scale != 1 each step evaluates the model with and without audio in one batch and uses
    v_uncond + cfg_scale * (v_cond - v_uncond)."""
    b, _, h, w = ref.shape
    x = torch.randn((b, 3, frames, h, w), device=ref.device, generator=gen)
    ts = torch.linspace(1.0, 0.0, steps + 1, device=ref.device)
    guided = cfg_scale != 1.0
    keep = torch.cat([torch.ones(b, dtype=torch.bool), torch.zeros(b, dtype=torch.bool)]).to(ref.device)
    for t, t_next in zip(ts[:-1], ts[1:]):
        tt = t.expand(b)
        if guided:
            v_cond, v_uncond = model(x.repeat(2, 1, 1, 1, 1), tt.repeat(2), ref.repeat(2, 1, 1, 1),
                                     mel.repeat(2, 1, 1), keep).float().chunk(2)
            v = v_uncond + cfg_scale * (v_cond - v_uncond)
        else:
            v = model(x, tt, ref, mel).float()
        x = x + (t_next - t) * v
    return x.clamp(-1, 1)
