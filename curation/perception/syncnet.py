"""SyncNet (Chung & Zisserman 2016) as syncnet-python computes it, without its pipeline's detour.

syncnet-python's own pipeline converts the clip to AVI, writes every frame as JPEG, runs the S3FD face
detector on each, tracks, writes 224x224 face crops to an XVID AVI, extracts them back to JPEG and then
scores them in batches of 20 five-frame windows. Here the face track comes from the person stage, the crops
are cut in numpy from one decode of the clip, and the network (syncnet-python's own `S`, loaded from
`syncnet_v2.model`) runs once over the clip:

- the lip network's only temporal kernel is its first 3-D convolution (5 frames, no temporal padding); every
  later layer has temporal size 1. So it runs as 2-D convolutions over all windows of the clip at once:
  the first layer sees the 5 frames of a window stacked as 15 channels, the later ones each window as one
  image; batch norms are folded into the convolutions (eval mode), and maxpool runs before ReLU (they
  commute), in channels-last layout. Same numbers up to float rounding.
- the audio network and the offset search (+-vshift frames, mean distance per shift, confidence = median
  minus minimum mean distance) are syncnet-python's, on the same MFCC (python_speech_features defaults on the
  int16 samples, 100 Hz, 20 MFCC frames = 5 video frames per window).

Offsets: `syncnet_offset` is syncnet-python's own number (vshift - argmin; positive = the audio LEADS the
video). The pipeline's convention is the opposite (positive = audio lags), so the stage reports
`offset = -syncnet_offset`."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np

FPS = 25
AUDIO_RATE = 16000
CROP_SIZE = 224  # syncnet-python's crops: 224x224, the lip net's input (its last conv needs 6x6 there)
CROP_SCALE = 0.40  # PipelineConfig.crop_scale
MEDFILT = 13  # smoothing of the track's size and centre in syncnet-python's _crop
PAD_VALUE = 110  # grey border where a crop leaves the frame
VSHIFT = 15


# ---------------------------------------------------------------------------------------------------------
# Crops (syncnet-python's SyncNetPipeline._crop geometry)

def crop_rects(boxes: np.ndarray) -> np.ndarray:
    """(N, 4) int [x1, y1, x2, y2] crop rectangles (frame pixels, may leave the frame) for per-frame face
    boxes [x0, y0, x1, y1] at 25 fps, exactly as syncnet-python's `_crop` cuts them from its padded frame:
    half-size and centre median-filtered over 13 frames, the crop 1.4 face sizes wide, from half a face
    above the centre to 1.3 face sizes below it."""
    from scipy import signal

    b = np.asarray(boxes, np.float64)
    s = np.maximum(b[:, 3] - b[:, 1], b[:, 2] - b[:, 0]) / 2
    x = (b[:, 0] + b[:, 2]) / 2
    y = (b[:, 1] + b[:, 3]) / 2
    s, x, y = (signal.medfilt(v, MEDFILT) for v in (s, x, y))
    cs = CROP_SCALE
    rects = np.empty((len(b), 4), np.int64)
    for i in range(len(b)):
        bs = s[i]
        pad = int(bs * (1 + 2 * cs))
        my, mx = y[i] + pad, x[i] + pad
        # int() on padded coordinates as syncnet-python does, then back to frame coordinates
        y1, y2 = int(my - bs), int(my + bs * (1 + 2 * cs))
        x1, x2 = int(mx - bs * (1 + cs)), int(mx + bs * (1 + cs))
        rects[i] = (x1 - pad, y1 - pad, x2 - pad, y2 - pad)
    return rects


def union_region(rects: np.ndarray, width: int, height: int) -> tuple[int, int, int, int] | None:
    """(x, y, w, h) of the part of the frame that any crop touches (even sizes for the decoder)."""
    x0 = max(0, int(rects[:, 0].min()))
    y0 = max(0, int(rects[:, 1].min()))
    x1 = min(width, int(rects[:, 2].max()))
    y1 = min(height, int(rects[:, 3].max()))
    x0, y0 = x0 // 2 * 2, y0 // 2 * 2
    x1 = min(width, x1 + (x1 - x0) % 2)
    y1 = min(height, y1 + (y1 - y0) % 2)
    if x1 - x0 < 2 or y1 - y0 < 2:
        return None
    return x0, y0, x1 - x0, y1 - y0


def cut_crop(region: np.ndarray, origin: tuple[int, int], rect) -> np.ndarray:
    """The 224x224 crop `rect` (frame coordinates) from `region` (the decoded part of the frame whose
    top-left corner is `origin`), grey outside the frame, resized as syncnet-python does (cv2 bilinear)."""
    import cv2

    x1, y1, x2, y2 = (int(v) for v in rect)
    ox, oy = origin
    h, w = region.shape[:2]
    canvas = np.full((y2 - y1, x2 - x1, region.shape[2]), PAD_VALUE, np.uint8)
    # intersection with the decoded region, in region coordinates
    ax0, ay0 = max(x1 - ox, 0), max(y1 - oy, 0)
    ax1, ay1 = min(x2 - ox, w), min(y2 - oy, h)
    if ax1 > ax0 and ay1 > ay0:
        canvas[ay0 + oy - y1:ay1 + oy - y1, ax0 + ox - x1:ax1 + ox - x1] = region[ay0:ay1, ax0:ax1]
    return cv2.resize(canvas, (CROP_SIZE, CROP_SIZE))


# ---------------------------------------------------------------------------------------------------------
# Audio

def to_int16(audio: np.ndarray) -> np.ndarray:
    """Float samples in [-1, 1] as the 16-bit PCM wav syncnet-python reads (ffmpeg's conversion)."""
    return np.clip(np.round(np.asarray(audio, np.float64) * 32768.0), -32768, 32767).astype(np.int16)


def mfcc(audio_int16: np.ndarray, rate: int = AUDIO_RATE) -> np.ndarray:
    """(13, T) MFCC at 100 Hz exactly as SyncNetInstance.evaluate computes it."""
    import python_speech_features

    return np.asarray(python_speech_features.mfcc(audio_int16, rate), np.float64).T


# ---------------------------------------------------------------------------------------------------------
# Weights

def load_syncnet(path: str, sha256: str | None = None):
    """syncnet-python's network `S` with the weights of a `syncnet_v2.model` file (a state dict, also in
    torch's legacy format), after checking the file's sha256 when one is given."""
    import torch
    from syncnet_python.SyncNetModel import S

    from curation.weights import sha256_file

    if sha256:
        got = sha256_file(path)
        if got != sha256:
            raise ValueError(f"{path}: sha256 {got} does not match the expected {sha256}")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state and not any(k.startswith("netcnn") for k in state):
        state = state["state_dict"]
    net = S()
    missing, unexpected = net.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(f"{path} is not a SyncNet state dict (missing {list(missing)[:5]}, unexpected {list(unexpected)[:5]})")
    return net.eval()


# ---------------------------------------------------------------------------------------------------------
# The batched network

def _fold(conv, bn):
    """Conv(3-D or 2-D) followed by eval-mode BatchNorm as one 2-D convolution's (weight, bias)."""
    import torch

    w = conv.weight.detach().double()
    b = conv.bias.detach().double() if conv.bias is not None else torch.zeros(w.shape[0], dtype=torch.float64)
    scale = bn.weight.detach().double() / torch.sqrt(bn.running_var.detach().double() + bn.eps)
    w = w * scale.view(-1, *([1] * (w.dim() - 1)))
    b = (b - bn.running_mean.detach().double()) * scale + bn.bias.detach().double()
    if w.dim() == 5:
        if w.shape[2] == 1:
            w = w[:, :, 0]
        else:  # (out, in, t, kh, kw) -> (out, in * t, kh, kw): channel c * t_size + t, as windows are stacked
            w = w.reshape(w.shape[0], w.shape[1] * w.shape[2], w.shape[3], w.shape[4])
    return w.float(), b.float()


def _conv2d(w, b, stride, padding):
    import torch.nn as nn

    c = nn.Conv2d(w.shape[1], w.shape[0], tuple(w.shape[2:]), stride=stride, padding=padding)
    c.weight.data.copy_(w)
    c.bias.data.copy_(b)
    return c


def _tuple2(v):
    return tuple(v[-2:]) if isinstance(v, (tuple, list)) else (v, v)


def lip_net_2d(net):
    """syncnet-python's `netcnnlip` (3-D) as an equivalent 2-D network over stacked windows."""
    import torch.nn as nn

    layers = list(net.netcnnlip)
    out: list = []
    i = 0
    while i < len(layers):
        m = layers[i]
        if isinstance(m, nn.Conv3d):
            bn = layers[i + 1]
            w, b = _fold(m, bn)
            out.append(_conv2d(w, b, _tuple2(m.stride), _tuple2(m.padding)))
            i += 2
            relu = i < len(layers) and isinstance(layers[i], nn.ReLU)
            pool = None
            if relu and i + 1 < len(layers) and isinstance(layers[i + 1], nn.MaxPool3d):
                pool = layers[i + 1]
            if pool is not None:  # max-pool before ReLU: identical (both monotone), on 4x fewer values
                out.append(nn.MaxPool2d(_tuple2(pool.kernel_size), _tuple2(pool.stride), _tuple2(pool.padding)))
                out.append(nn.ReLU(inplace=True))
                i += 2
            elif relu:
                out.append(nn.ReLU(inplace=True))
                i += 1
        elif isinstance(m, nn.MaxPool3d):
            out.append(nn.MaxPool2d(_tuple2(m.kernel_size), _tuple2(m.stride), _tuple2(m.padding)))
            i += 1
        else:
            raise ValueError(f"unexpected layer in netcnnlip: {m}")
    return nn.Sequential(*out).eval()


@dataclass
class SyncResult:
    syncnet_offset: int  # syncnet-python's sign: vshift - argmin (positive = audio leads)
    offset: int  # the pipeline's sign: positive = audio lags the video
    conf: float  # median - min of the mean distances over shifts
    min_dist: float
    mean_dists: np.ndarray  # (2 * vshift + 1,)
    n_windows: int


class FastSyncNet:
    """syncnet-python's scoring, batched. `evaluate(crops, audio_int16)` gives what
    SyncNetInstance.evaluate gives on the same crops (as JPEG frames) and audio (as a 16 kHz wav)."""

    def __init__(self, net, device: str = "cpu", batch_windows: int = 16, channels_last: bool = True):
        import torch

        self.torch = torch
        self.device = torch.device(device)
        self.batch = max(1, int(batch_windows))
        self.fmt = torch.channels_last if channels_last else torch.contiguous_format
        net = net.eval()
        self.tsize = net.netcnnlip[0].kernel_size[0]  # 5 frames per window
        self.lip_cnn = lip_net_2d(net).to(self.device).to(memory_format=self.fmt)
        self.lip_fc = net.netfclip.to(self.device).eval()
        self.aud_cnn = net.netcnnaud.to(self.device).eval()
        self.aud_fc = net.netfcaud.to(self.device).eval()

    # -- video --------------------------------------------------------------------------------------------
    def _lip_batch(self, frames: np.ndarray):
        """Features of every 5-frame window of `frames` ((n, 224, 224, 3) uint8 BGR, n >= 5)."""
        torch = self.torch
        t = self.tsize
        x = torch.from_numpy(np.ascontiguousarray(frames)).to(self.device)  # n, H, W, C
        x = x.permute(3, 0, 1, 2).float()  # C, n, H, W
        win = x.unfold(1, t, 1)  # C, n-t+1, H, W, t
        win = win.permute(1, 0, 4, 2, 3)  # windows, C, t, H, W  (channel index c * t + k)
        win = win.reshape(win.shape[0], -1, win.shape[3], win.shape[4]).contiguous(memory_format=self.fmt)
        mid = self.lip_cnn(win)
        return self.lip_fc(mid.reshape(mid.shape[0], -1))

    def lip_features(self, crops: Iterable[np.ndarray]):
        """(n_frames - 4, 1024) features of the windows of a stream of 224x224x3 uint8 BGR crops, computed
        `batch_windows` windows at a time (the clip is never held as float)."""
        torch = self.torch
        t = self.tsize
        feats = []
        buf: list[np.ndarray] = []
        with torch.inference_mode():
            for c in crops:
                buf.append(c)
                if len(buf) == self.batch + t - 1:
                    feats.append(self._lip_batch(np.stack(buf)).cpu())
                    buf = buf[-(t - 1):]
            if len(buf) >= t:
                feats.append(self._lip_batch(np.stack(buf)).cpu())
        if not feats:
            return torch.zeros((0, self.lip_fc[-1].out_features))
        return torch.cat(feats, 0)

    # -- audio --------------------------------------------------------------------------------------------
    def audio_features(self, mfcc_13xT: np.ndarray, n_windows: int):
        """(n_windows, 1024) features of the MFCC windows [4 v, 4 v + 20) for v < n_windows."""
        torch = self.torch
        cc = torch.from_numpy(np.asarray(mfcc_13xT, np.float64)).float()
        win = cc.unfold(1, 20, 4)[:, :n_windows]  # 13, n, 20
        if win.shape[1] < n_windows:
            raise ValueError(f"audio too short: {win.shape[1]} MFCC windows for {n_windows} video windows")
        win = win.permute(1, 0, 2).unsqueeze(1).contiguous()  # n, 1, 13, 20
        out = []
        step = max(64, self.batch * 8)
        with torch.inference_mode():
            for i in range(0, n_windows, step):
                mid = self.aud_cnn(win[i:i + step].to(self.device))
                out.append(self.aud_fc(mid.reshape(mid.shape[0], -1)).cpu())
        return torch.cat(out, 0) if out else torch.zeros((0, self.aud_fc[-1].out_features))

    # -- both ---------------------------------------------------------------------------------------------
    def evaluate(self, crops: Iterable[np.ndarray], audio_int16: np.ndarray, vshift: int = VSHIFT,
                 rate: int = AUDIO_RATE) -> SyncResult:
        im_feat = self.lip_features(crops)
        n_images = im_feat.shape[0] + self.tsize - 1 if im_feat.shape[0] else 0
        # SyncNetInstance.evaluate: min_length = min(frames, floor(samples / 640)); windows [0, min_length - 5)
        min_length = min(n_images, len(audio_int16) // (rate // FPS))
        last = min_length - 5
        if last < 1:
            raise ValueError(f"clip too short for SyncNet: {n_images} frames, {len(audio_int16) / rate:.2f} s of audio")
        cc_feat = self.audio_features(mfcc(audio_int16, rate), last)
        return distances_to_result(im_feat[:last], cc_feat, vshift)


def distances_to_result(im_feat, cc_feat, vshift: int = VSHIFT) -> SyncResult:
    """syncnet-python's calc_pdist + offset/confidence, vectorised (same torch ops, same reductions)."""
    import torch
    import torch.nn.functional as F

    n = im_feat.shape[0]
    win = 2 * vshift + 1
    cc_p = F.pad(cc_feat, (0, 0, vshift, vshift))
    idx = torch.arange(n).unsqueeze(1) + torch.arange(win).unsqueeze(0)  # n, win
    dists = []
    for i0 in range(0, n, 256):  # (n, win, 1024) in slices
        i1 = min(n, i0 + 256)
        a = im_feat[i0:i1].unsqueeze(1).expand(-1, win, -1).reshape(-1, im_feat.shape[1])
        b = cc_p[idx[i0:i1].reshape(-1)]
        dists.append(F.pairwise_distance(a, b).reshape(i1 - i0, win))
    d = torch.cat(dists, 0)  # n, win: row i = syncnet-python's dists[i]
    mdist = torch.mean(d.T, 1)  # as torch.mean(torch.stack(dists, 1), 1)
    minval, minidx = torch.min(mdist, 0)
    sn_off = int(vshift - minidx)
    conf = float(torch.median(mdist) - minval)
    return SyncResult(syncnet_offset=sn_off, offset=-sn_off, conf=conf, min_dist=float(minval),
                      mean_dists=mdist.numpy().astype(np.float64), n_windows=n)


def iter_crops(frames: Iterator[np.ndarray], origin: tuple[int, int], rects: np.ndarray) -> Iterator[np.ndarray]:
    """224x224 crops of the decoded regions `frames` (one per 25 fps frame), at most len(rects)."""
    for k, region in enumerate(frames):
        if k >= len(rects):
            break
        yield cut_crop(region, origin, rects[k])
