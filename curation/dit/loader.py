"""Training batches from a training view (view.py): read a window, augment, batch. No decoding.

Batch i is a pure function of (view, config, i): its sample j is global sample g = i * B + j, which is
position g % N of epoch g // N's permutation of the N clips (seeded by seed and epoch); its window start
and flip are drawn from a generator seeded by (seed, g). A run resumed at step s asks for batches s, s+1,
... and gets exactly what the uninterrupted run got, whatever the number of loader workers.

Each worker maps the view's tars read-only and copies out only the window's frames and mel rows (the
arrays are stored uncompressed, so a window is one contiguous slice); the page cache is shared by all.
"""

from __future__ import annotations

import itertools

import numpy as np
import torch

from .configs import MEL_PER_FRAME, Config
from .view import scan_view


class WindowBatches(torch.utils.data.Dataset):
    """dataset[i] = global batch i: {video (B,3,T,H,W) uint8, ref (B,3,H,W) uint8, mel (B,4T,n_mels)
    float32, key [B], start (B,) window start frames}."""

    def __init__(self, view_dir: str, cfg: Config):
        self.cfg = cfg
        self.paths, self.clips = scan_view(view_dir, cfg)
        self._maps: list[np.memmap] | None = None
        self._perm: tuple[int, np.ndarray] | None = None
        self._frame_bytes = cfg.resolution * cfg.resolution * 3
        self._mel_bytes = MEL_PER_FRAME * cfg.n_mels * 2

    def __len__(self) -> int:  # endless in practice; the sampler decides which batches are read
        return 1 << 62

    def _map(self, shard: int) -> np.memmap:
        if self._maps is None:  # opened lazily, in the worker that reads
            self._maps = [np.memmap(p, np.uint8, mode="r") for p in self.paths]
        return self._maps[shard]

    def clip_of(self, g: int) -> int:
        n = len(self.clips)
        epoch, pos = divmod(g, n)
        if self._perm is None or self._perm[0] != epoch:
            self._perm = (epoch, np.random.default_rng([self.cfg.seed, 0, epoch]).permutation(n))
        return int(self._perm[1][pos])

    def sample(self, g: int) -> dict:
        cfg, r, t = self.cfg, self.cfg.resolution, self.cfg.frames
        clip = self.clips[self.clip_of(g)]
        rng = np.random.default_rng([cfg.seed, 1, g])
        start = int(rng.integers(0, clip.n_frames - t + 1))
        flip = bool(rng.random() < cfg.hflip)
        m = self._map(clip.shard)
        fb = self._frame_bytes
        video = m[clip.frames_offset + start * fb:clip.frames_offset + (start + t) * fb].reshape(t, r, r, 3)
        ref = m[clip.frames_offset:clip.frames_offset + fb].reshape(r, r, 3)
        mb = self._mel_bytes
        mel = m[clip.mel_offset + start * mb:clip.mel_offset + (start + t) * mb].view(np.float16)
        video, ref = torch.from_numpy(np.array(video)), torch.from_numpy(np.array(ref))
        if flip:
            video, ref = video.flip(2), ref.flip(1)
        return {"video": video.permute(3, 0, 1, 2), "ref": ref.permute(2, 0, 1),
                "mel": torch.from_numpy(mel.astype(np.float32).reshape(MEL_PER_FRAME * t, cfg.n_mels)),
                "key": clip.key, "start": start}

    def __getitem__(self, i: int) -> dict:
        b = self.cfg.batch_size
        return collate([self.sample(i * b + j) for j in range(b)])


def collate(samples: list[dict]) -> dict:
    batch = {k: torch.stack([s[k] for s in samples]) for k in ("video", "ref", "mel")}
    batch["key"] = [s["key"] for s in samples]
    batch["start"] = torch.tensor([s["start"] for s in samples])
    return batch


class _From(torch.utils.data.Sampler):
    def __init__(self, start: int):
        self.start = start

    def __iter__(self):
        return itertools.count(self.start)


def make_loader(view_dir: str, cfg: Config, start_batch: int = 0, pin_memory: bool = False,
                num_workers: int | None = None) -> torch.utils.data.DataLoader:
    """Endless loader of global batches start_batch, start_batch + 1, ... of the view (see WindowBatches),
    read by `num_workers` processes (default cfg.num_workers; 0 reads in this process)."""
    workers = cfg.num_workers if num_workers is None else num_workers
    return torch.utils.data.DataLoader(WindowBatches(view_dir, cfg), batch_size=None, sampler=_From(start_batch),
                                       num_workers=workers, pin_memory=pin_memory,
                                       prefetch_factor=2 if workers else None, persistent_workers=False)
