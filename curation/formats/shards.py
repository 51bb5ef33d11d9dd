"""`curation inspect SHARD.tar`: list a shard's samples."""

from __future__ import annotations

import json
import tarfile
from collections import OrderedDict


def read_samples(path: str):
    """(key, {ext: bytes}) for each sample of a WebDataset tar, in order, streaming."""
    current, files = None, OrderedDict()
    with tarfile.open(path, "r") as tf:
        for m in tf:
            if not m.isfile():
                continue
            base = m.name.rsplit("/", 1)[-1]
            key, _, ext = base.partition(".")
            if current is not None and key != current:
                yield current, files
                files = OrderedDict()
            current = key
            files[ext] = tf.extractfile(m).read()
    if current is not None:
        yield current, files


def inspect_shard(path: str, as_json: bool = False) -> int:
    from rich.console import Console
    from rich.table import Table

    t = Table(title=path)
    for col in ("key", "files", "source", "span (s)", "frames", "scores"):
        t.add_column(col)
    n = 0
    for key, files in read_samples(path):
        n += 1
        meta = json.loads(files["json"]) if "json" in files else {}
        if as_json:
            print(json.dumps(meta))
            continue
        scores = meta.get("scores", {})
        shown = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in list(scores.items())[:6])
        t.add_row(key, " ".join(f"{e}:{len(b) // 1024}k" for e, b in files.items()),
                  str(meta.get("source", "")).rsplit("/", 1)[-1],
                  f"{meta.get('start_s', 0):.2f}-{meta.get('end_s', 0):.2f}", str(meta.get("n_frames", "")), shown)
    if not as_json:
        Console().print(t)
        print(f"{n} samples")
    return 0
