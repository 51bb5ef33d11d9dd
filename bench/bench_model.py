"""Benchmark the bundled model's training step: step time, samples/s and MFU, as text and JSON.

    python bench/bench_model.py --config tiny --device cpu
    python bench/bench_model.py --config base --device cuda      # bf16 autocast, MFU against 989 TFLOP/s

The same as `curation bench-model`: it times curation.dit.train.train_step, the function training
runs, so the CPU tests and this CUDA benchmark exercise one code path."""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from curation.dit.cli import BENCH_DESCRIPTION, add_bench_arguments  # noqa: E402

if __name__ == "__main__":
    args = add_bench_arguments(argparse.ArgumentParser(description=BENCH_DESCRIPTION)).parse_args()
    args.func(args)
