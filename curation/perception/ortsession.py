"""onnxruntime sessions on the device a stage was given: the CUDA execution provider where the stage holds a GPU
share and the installed onnxruntime has one (the `onnxruntime-gpu` package), the CPU provider otherwise (and
always as the fallback for operators CUDA lacks). Ray sets CUDA_VISIBLE_DEVICES for a worker with a GPU share,
so the worker's device 0 is the GPU it was given."""

from __future__ import annotations

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"


def available_providers() -> list[str]:
    """The installed onnxruntime's execution providers ([] where onnxruntime is missing)."""
    try:
        import onnxruntime as ort
    except ImportError:
        return []
    return list(ort.get_available_providers())


def providers_for(use_gpu: bool, available: list[str] | None = None) -> list[str]:
    """Execution providers in order of preference for a stage with (`use_gpu`) or without a GPU share."""
    available = available_providers() if available is None else available
    return [CUDA, CPU] if use_gpu and CUDA in available else [CPU]


def cuda_missing_reason(available: list[str] | None = None) -> str | None:
    """Why onnxruntime here cannot run models on CUDA, or None where it can."""
    available = available_providers() if available is None else available
    if CUDA in available:
        return None
    return "onnxruntime has no CUDA execution provider here (install onnxruntime-gpu)"


def session(path: str, threads: int = 1, use_gpu: bool = False):
    """An InferenceSession of the model at `path`: `threads` intra-op threads (0: onnxruntime's default), one
    inter-op thread, on the providers of providers_for(use_gpu)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    if threads:
        so.intra_op_num_threads = int(threads)
        so.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), sess_options=so, providers=providers_for(use_gpu))
