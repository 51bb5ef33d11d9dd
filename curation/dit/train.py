"""Training: AdamW with a warmup + cosine schedule, bf16 autocast on CUDA (fp32 on CPU), EMA weights,
gradient clipping, and checkpoints that resume exactly. `compile=True` runs the model's forward and
backward through torch.compile (the weights, and so the checkpoints, are the same module's).

Training reads a training view (view.py); given curation shards instead, it first prepares one in
RUN_DIR/view (once: a resumed run reuses it).

A checkpoint holds the model, EMA, optimizer and scheduler state, the step, the RNG states (the noise
generator that draws t, noise and audio dropout, and torch's global generators) and the config as a
plain dict; it loads with `torch.load(weights_only=True)`. The data position needs no state of its own:
the loader is a pure function of the config and the step (see loader.py)."""

from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import time
from dataclasses import dataclass, replace

import torch
from torch.optim.lr_scheduler import LambdaLR

from .configs import Config
from .dit import PREDICTION, DiT, check_prediction
from .flow import flow_loss
from .loader import make_loader
from .view import check_view, is_view, prepare_view

CKPT_NAME = "last.pt"
VIEW_NAME = "view"  # where a run keeps the view it prepared from curation shards
# Fields a config passed at resume may differ in from the stored one (which is what the run goes on with).
IGNORED_AT_RESUME = {"steps", "log_every", "ckpt_every"}


@dataclass
class TrainState:
    cfg: Config
    device: torch.device
    model: DiT
    ema: DiT
    opt: torch.optim.AdamW
    sched: LambdaLR
    gen: torch.Generator  # t, noise and audio-dropout draws
    step: int = 0
    forward: torch.nn.Module | None = None  # what the step calls: the model, or its torch.compile wrapper

    def __post_init__(self):
        if self.forward is None:
            self.forward = self.model


def autocast(device: torch.device):
    """bf16 autocast on CUDA, plain fp32 elsewhere."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def warmup_cosine(step: int, warmup: int, total: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def build_state(cfg: Config, device: str | torch.device, compile: bool = False) -> TrainState:
    device = torch.device(device)
    torch.manual_seed(cfg.seed)
    model = DiT(cfg).to(device)
    ema = copy.deepcopy(model).requires_grad_(False).eval()
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.ndim >= 2], "weight_decay": cfg.weight_decay},
              {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]
    opt = torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.95), fused=device.type == "cuda")
    sched = LambdaLR(opt, lambda s: warmup_cosine(s, cfg.warmup_steps, cfg.steps))
    gen = torch.Generator(device).manual_seed(cfg.seed)
    return TrainState(cfg, device, model, ema, opt, sched, gen, forward=torch.compile(model) if compile else model)


def model_inputs(batch: dict, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """uint8 video/ref -> float in [-1, 1] on the device; mel as is."""
    video = batch["video"].to(device, non_blocking=True).float() / 127.5 - 1.0
    ref = batch["ref"].to(device, non_blocking=True).float() / 127.5 - 1.0
    return video, ref, batch["mel"].to(device, non_blocking=True)


def train_step(st: TrainState, batch: dict) -> dict:
    """One optimizer step on `batch`; returns the loss and pre-clip gradient norm as device tensors."""
    video, ref, mel = model_inputs(batch, st.device)
    st.model.train()
    with autocast(st.device):
        loss = flow_loss(st.forward, video, ref, mel, st.gen, st.cfg.audio_dropout)
    st.opt.zero_grad(set_to_none=True)
    loss.backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(st.model.parameters(), st.cfg.grad_clip)
    st.opt.step()
    st.sched.step()
    st.step += 1
    decay = min(st.cfg.ema_decay, (1 + st.step) / (10 + st.step))  # EMA warmup: early weights fade fast
    with torch.no_grad():
        torch._foreach_lerp_(list(st.ema.parameters()), list(st.model.parameters()), 1.0 - decay)
    return {"loss": loss.detach(), "grad_norm": grad_norm.detach()}


def save_checkpoint(st: TrainState, path: str) -> None:
    rng = {"noise": st.gen.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    state = {"config": st.cfg.to_dict(), "prediction": PREDICTION, "step": st.step, "model": st.model.state_dict(),
             "ema": st.ema.state_dict(), "optimizer": st.opt.state_dict(), "scheduler": st.sched.state_dict(),
             "rng": rng}
    tmp = path + ".tmp"
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: str, device: str | torch.device, cfg: Config | None = None,
                    steps: int | None = None, compile: bool = False) -> TrainState:
    """Rebuild the training state saved at `path` with its stored config, `steps` replacing the total
    step count when given. `cfg`, when given, is only checked: a run resumes under the config it began."""
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    check_prediction(ckpt, path)
    saved = Config.from_dict(ckpt["config"])
    if cfg is not None:
        differ = sorted(k for k, v in cfg.to_dict().items() if v != saved.to_dict()[k] and k not in IGNORED_AT_RESUME)
        if differ:
            raise ValueError(f"config {cfg.name!r} differs from the checkpoint's in {differ}")
    st = build_state(saved if steps is None else replace(saved, steps=steps), device, compile)
    st.model.load_state_dict(ckpt["model"])
    st.ema.load_state_dict(ckpt["ema"])
    st.opt.load_state_dict(ckpt["optimizer"])
    st.sched.load_state_dict(ckpt["scheduler"])
    st.step = ckpt["step"]
    st.gen.set_state(ckpt["rng"]["noise"])
    torch.set_rng_state(ckpt["rng"]["torch"])
    if "cuda" in ckpt["rng"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(ckpt["rng"]["cuda"])
    return st


def training_view(data_dir: str, out_dir: str, cfg: Config, progress: bool = True) -> str:
    """The view to train `cfg` on: `data_dir` itself when it is one (checked against cfg), else the view
    of the curation shards in `data_dir` kept in OUT/view, prepared there the first time."""
    if is_view(data_dir):
        check_view(data_dir, cfg)
        return data_dir
    view = os.path.join(out_dir, VIEW_NAME)
    if is_view(view):
        check_view(view, cfg)
    else:
        meta = prepare_view(data_dir, cfg, view, progress=progress)
        print(json.dumps({"view": view, "clips": meta["clips"], "frames": meta["frames"],
                          "left_out": len(meta["left_out"])}), flush=True)
    return view


def train(data_dir: str, out_dir: str, cfg: Config | None = None, *, device: str = "cpu",
          resume: bool = False, steps: int | None = None, until: int | None = None, compile: bool = False,
          progress: bool = True) -> TrainState:
    """Train to step `until` (default: the total, cfg.steps or `steps`), logging to stdout and
    OUT/log.jsonl and checkpointing to OUT/last.pt every cfg.ckpt_every steps and at the end.
    `data_dir` is a training view or curation shards (see training_view).
    A new run needs `cfg`; `resume` continues OUT/last.pt under its stored config (see load_checkpoint)."""
    ckpt_path = os.path.join(out_dir, CKPT_NAME)
    if resume:
        st = load_checkpoint(ckpt_path, device, cfg, steps, compile)
    else:
        if cfg is None:
            raise ValueError("a new run needs a config")
        if os.path.exists(ckpt_path):
            raise FileExistsError(f"{ckpt_path} exists: pass resume=True (--resume) or use another --out")
        st = build_state(cfg if steps is None else replace(cfg, steps=steps), device, compile)
    cfg = st.cfg
    until = cfg.steps if until is None else until
    os.makedirs(out_dir, exist_ok=True)
    view = training_view(data_dir, out_dir, cfg, progress)
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(cfg.to_dict(), f, indent=1)

    loader = iter(make_loader(view, cfg, start_batch=st.step, pin_memory=st.device.type == "cuda"))
    with open(os.path.join(out_dir, "log.jsonl"), "a") as log:
        losses, t0, step0 = [], time.perf_counter(), st.step
        while st.step < until:
            out = train_step(st, next(loader))
            losses.append(out["loss"])
            if st.step % cfg.log_every == 0 or st.step == until:
                dt = time.perf_counter() - t0
                n = st.step - step0
                rec = {"step": st.step, "loss": torch.stack(losses).mean().item(), "lr": st.sched.get_last_lr()[0],
                       "grad_norm": out["grad_norm"].item(), "step_time_s": dt / n,
                       "samples_per_s": n * cfg.batch_size / dt}
                line = json.dumps(rec)
                print(line, flush=True)
                log.write(line + "\n")
                log.flush()
                losses, t0, step0 = [], time.perf_counter(), st.step
            if st.step % cfg.ckpt_every == 0 or st.step == until:
                save_checkpoint(st, ckpt_path)
    return st
