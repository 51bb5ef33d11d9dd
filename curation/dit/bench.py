"""Training-step benchmark: step time, samples/s and model FLOPs utilisation for a config on a device.

It times `train.train_step`, the function training uses (forward, backward, clipping, AdamW, EMA; bf16
autocast on CUDA), on a fixed synthetic batch, so it measures the model and not the data loader. FLOPs
are counted for one step with torch.utils.flop_counter.FlopCounterMode (matmuls, convolutions and
attention, forward and backward)."""

from __future__ import annotations

import time
from dataclasses import replace

import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count

from .configs import MEL_PER_FRAME, Config
from .train import build_state, train_step

# Dense bf16 peak of the accelerators this is meant for, matched against torch.cuda.get_device_name().
PEAK_TFLOPS_BF16 = {"H100": 989.0, "H200": 989.0}


def _cpu_sdpa_flop(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


def _cpu_sdpa_backward_flop(grad_out_shape, query_shape, key_shape, value_shape, *args, out_shape=None,
                            **kwargs) -> int:
    return sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)


# torch counts the CUDA attention kernels only; the CPU one computes the same products.
CPU_ATTENTION_FLOPS = {
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_sdpa_flop,
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward: _cpu_sdpa_backward_flop,
}


def synthetic_batch(cfg: Config, batch_size: int) -> dict:
    g = torch.Generator().manual_seed(0)
    r, t = cfg.resolution, cfg.frames
    return {"video": torch.randint(0, 256, (batch_size, 3, t, r, r), dtype=torch.uint8, generator=g),
            "ref": torch.randint(0, 256, (batch_size, 3, r, r), dtype=torch.uint8, generator=g),
            "mel": torch.randn(batch_size, MEL_PER_FRAME * t, cfg.n_mels, generator=g)}


def peak_flops(device: torch.device, peak_tflops: float | None) -> float | None:
    if peak_tflops:
        return peak_tflops * 1e12
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        return next((v * 1e12 for k, v in PEAK_TFLOPS_BF16.items() if k in name), None)
    return None


def benchmark(cfg: Config, device: str = "cpu", batch_size: int | None = None, steps: int = 10, warmup: int = 3,
              peak_tflops: float | None = None, compile: bool = False) -> dict:
    if batch_size:
        cfg = replace(cfg, batch_size=batch_size)
    st = build_state(cfg, device, compile)
    batch = synthetic_batch(cfg, cfg.batch_size)
    for _ in range(warmup):
        train_step(st, batch)
    compiled, st.forward = st.forward, st.model  # FLOPs are counted on the eager model (same math)
    with FlopCounterMode(display=False, custom_mapping=CPU_ATTENTION_FLOPS) as counter:
        train_step(st, batch)
    st.forward = compiled
    flops = counter.get_total_flops()

    sync = torch.cuda.synchronize if st.device.type == "cuda" else (lambda: None)
    sync()
    t0 = time.perf_counter()
    for _ in range(steps):
        out = train_step(st, batch)
    out["loss"].item()
    sync()
    step_time = (time.perf_counter() - t0) / steps

    peak = peak_flops(st.device, peak_tflops)
    achieved = flops / step_time
    return {
        "config": cfg.name, "device": torch.cuda.get_device_name(st.device) if st.device.type == "cuda" else "cpu",
        "precision": "bf16-autocast" if st.device.type == "cuda" else "fp32", "compiled": compile,
        "batch_size": cfg.batch_size, "params_M": sum(p.numel() for p in st.model.parameters()) / 1e6,
        "step_time_s": step_time, "samples_per_s": cfg.batch_size / step_time,
        "flops_per_step": flops, "achieved_tflops": achieved / 1e12,
        "peak_tflops": peak / 1e12 if peak else None, "mfu": achieved / peak if peak else None,
    }


def format_report(r: dict) -> str:
    mfu = f"{100 * r['mfu']:.1f}% of {r['peak_tflops']:.0f} TFLOP/s" if r["mfu"] is not None else "n/a"
    return "\n".join([
        f"config {r['config']} on {r['device']} ({r['precision']}), batch {r['batch_size']}, "
        f"{r['params_M']:.2f} M parameters{', torch.compile' if r.get('compiled') else ''}",
        f"train step       {1000 * r['step_time_s']:.1f} ms",
        f"samples/s        {r['samples_per_s']:.1f}",
        f"FLOPs per step   {r['flops_per_step'] / 1e9:.2f} GFLOP ({r['achieved_tflops']:.3f} TFLOP/s achieved)",
        f"MFU              {mfu}",
    ])
