"""CLIP aesthetic score: an open_clip image encoder and the LAION aesthetic predictor v1 linear head
(`laion_aesthetic/sa_0_4_vit_*_linear.pth`: a `Linear(embed_dim, 1)` over the L2-normalised CLIP image
embedding; scores are roughly 1-10, higher is prettier).

The head was trained on OpenAI CLIP embeddings: use it with the matching encoder (ViT-B-32 / ViT-B-16 /
ViT-L-14 with the OpenAI weights, open_clip names `ViT-B-32-quickgelu` etc.). The encoder is NOT shipped with
the project and cannot be downloaded at run time: the manifest names a local open_clip state-dict
checkpoint (for example `open_clip_pytorch_model.bin` of `timm/vit_base_patch32_clip_224.openai`), loaded
with `weights_only=True`. An architecture open_clip does not know can be described by a model config JSON
(`open_clip.add_model_config`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

# The head each CLIP architecture's embedding belongs to (names in curation.weights.REGISTRY).
HEAD_FOR_ARCH = {
    "ViT-B-32": "aesthetic_vit_b_32", "ViT-B-32-quickgelu": "aesthetic_vit_b_32",
    "ViT-B-16": "aesthetic_vit_b_16", "ViT-B-16-quickgelu": "aesthetic_vit_b_16",
    "ViT-L-14": "aesthetic_vit_l_14", "ViT-L-14-quickgelu": "aesthetic_vit_l_14",
}


def load_head(path: str | Path) -> tuple[np.ndarray, float]:
    """(weight (D,), bias) of a LAION aesthetic linear head."""
    import torch

    sd = torch.load(str(path), map_location="cpu", weights_only=True)
    if isinstance(sd, dict) and "state_dict" in sd:
        sd = sd["state_dict"]
    w = {k.split(".")[-1]: v for k, v in sd.items()}
    if "weight" not in w or "bias" not in w:
        raise ValueError(f"{path}: not a linear head state dict (keys {sorted(sd)})")
    return w["weight"].float().reshape(-1).numpy(), float(w["bias"].float().reshape(-1)[0])


class AestheticScorer:
    def __init__(self, arch: str, clip_path: str | Path, head_path: str | Path, model_config: str | Path | None = None,
                 threads: int = 1, device: str = "cpu"):
        import open_clip
        import torch

        if threads:
            torch.set_num_threads(threads)
        if model_config:
            open_clip.add_model_config(str(model_config))
        model, _, preprocess = open_clip.create_model_and_transforms(arch, pretrained=str(clip_path), device=device,
                                                                     weights_only=True)
        self.model = model.eval()
        self.preprocess = preprocess
        self.device = device
        self.w, self.b = load_head(head_path)
        dim = getattr(model.visual, "output_dim", None)
        if dim is not None and dim != self.w.shape[0]:
            raise ValueError(f"CLIP {arch} embeds in {dim} dims but the aesthetic head {head_path} expects "
                             f"{self.w.shape[0]}: use the head of the same architecture")

    def embed(self, rgb_frames: list[np.ndarray]) -> np.ndarray:
        """L2-normalised image embeddings (N, D)."""
        import torch
        from PIL import Image

        x = torch.stack([self.preprocess(Image.fromarray(f)) for f in rgb_frames]).to(self.device)
        with torch.no_grad():
            e = self.model.encode_image(x).float()
        e = e / e.norm(dim=-1, keepdim=True)
        return e.cpu().numpy()

    def score(self, rgb_frames: list[np.ndarray]) -> np.ndarray:
        """Aesthetic score per frame: w . (e / |e|) + b."""
        return self.embed(rgb_frames) @ self.w + self.b
