"""Column types of the audit tables and the index: counts and sizes as integers, never float64.

A column built from Python dicts with a None in it (a rejected source has no width) becomes float64 in
pandas; these columns are integers in the sample json, so they are integers in the tables too (`Int64`,
pandas' integer with nulls, where a value can be missing; plain int64 where none is, as in the index)."""

from __future__ import annotations

import pandas as pd

INTEGER_COLUMNS = ("width", "height", "n_frames", "audio_shift_frames", "clip_index", "n_candidates", "n_kept",
                   "probe_width", "probe_height", "probe_n_frames", "probe_rotation", "probe_audio_rate",
                   "probe_audio_channels")


def integer_columns(df: pd.DataFrame) -> pd.DataFrame:
    """`df` with every known integer column as int64 (no nulls) or Int64 (some nulls). A column holding a
    non-integral value is left as it is (never rounded)."""
    if df.empty:
        return df
    df = df.copy()
    for c in INTEGER_COLUMNS:
        if c not in df.columns:
            continue
        col = pd.to_numeric(df[c], errors="coerce")
        if df[c].notna().sum() != col.notna().sum():
            continue  # not numbers
        vals = col.dropna()
        if len(vals) and not (vals == vals.round()).all():
            continue
        df[c] = col.astype("int64") if col.notna().all() else col.astype("Int64")
    return df
