"""File names that are not valid UTF-8, kept reversibly in the audit's parquet files.

Linux allows any bytes in a file name; Python hands such a name over as a str with lone surrogates
(os.fsdecode's surrogateescape), which Arrow (and so pandas and parquet) refuses. Every text value of an audit
row goes through `text_row`: a str that cannot be encoded as UTF-8 is written as its bytes decoded with
backslash escapes (valid UTF-8, readable, e.g. `caf\\xe9.mp4`), and for the path columns (`source`,
`audio_path`) the exact bytes go into a binary column beside it (`source_bytes`, `audio_path_bytes`; null for
names that are valid UTF-8). `original(text, raw)` gives the name back as the str os.listdir returned."""

from __future__ import annotations

import math
import os

PATH_COLUMNS = ("source", "audio_path")


def is_utf8(s: str) -> bool:
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def as_text(s: str) -> str:
    """`s` as valid UTF-8 text: unchanged when it is, else its bytes with the invalid ones escaped (\\xNN)."""
    if is_utf8(s):
        return s
    return s.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace").encode(
        "utf-8", "backslashreplace").decode("utf-8")


def text_row(row: dict) -> dict:
    """An audit row that Arrow accepts; path columns with a non-UTF-8 name get their bytes in `<col>_bytes`."""
    out = {}
    for k, v in row.items():
        if isinstance(v, str) and not is_utf8(v):
            out[k] = as_text(v)
            if k in PATH_COLUMNS:
                out[f"{k}_bytes"] = os.fsencode(v)
        else:
            out[k] = v
    return out


def original(text, raw=None):
    """The name as the file system gave it: from the bytes column when it has them, else the text."""
    if isinstance(raw, (bytes, bytearray)):
        return os.fsdecode(bytes(raw))
    if text is None or (isinstance(text, float) and math.isnan(text)):
        return None
    return text


def original_column(df, col: str = "source") -> list:
    """`original` over a DataFrame's column and its bytes column (when the frame has one)."""
    raws = df[f"{col}_bytes"].tolist() if f"{col}_bytes" in df.columns else [None] * len(df)
    return [original(t, r) for t, r in zip(df[col].tolist(), raws)]
