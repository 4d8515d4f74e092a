"""Reading data files row by row, for every loader of the data layer: numbers in plain ASCII
decimal notation, CSV files as UTF-8 text, headers without repeated columns, and bad rows that
either stop the load (`DataError` naming the file and line) or are skipped, counted and reported.
"""
import contextlib
import csv
import io
import os
import re
import warnings

import numpy as np

__all__ = ["DataError", "parse_number", "parse_label", "open_csv", "check_header", "check_on_error",
           "bad_row", "report_skipped", "not_a_file"]


class DataError(ValueError):
    """A bad input (CSV row, image file, split) with the file and row it came from."""


def report_skipped(name, skipped):
    if skipped:
        shown = "; ".join(skipped[:5]) + (" ..." if len(skipped) > 5 else "")
        warnings.warn(f"{name}: skipped {len(skipped)} bad row(s): {shown}", stacklevel=3)


def bad_row(msg, on_error, skipped):
    if on_error == "raise":
        raise DataError(msg)
    skipped.append(msg)


_NUMBER = re.compile(r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?")   # ASCII only


def parse_number(text):
    """A float from a data file's field: plain ASCII decimal notation only (12, -3.5, 1e-3), so
    that what Python's float() would also take ('1_000', full-width or other scripts' digits) is
    not read as a number the file did not mean; 'nan'/'inf' give NaN/inf for the caller to
    refuse. ValueError otherwise."""
    t = str(text).strip()
    if _NUMBER.fullmatch(t):
        return float(t)
    if t.lower().lstrip("+-") in ("nan", "inf", "infinity"):
        return float(t)
    raise ValueError(f"not a number: {text!r}")


@contextlib.contextmanager
def open_csv(path):
    """`with open_csv(path) as rows:` the rows of a CSV file read as UTF-8 (a byte-order mark is
    dropped); a file that is not UTF-8 text is a DataError naming the file, line and byte."""
    with open(path, "rb") as f:
        data = f.read()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[:e.start].count(b"\n") + 1
        raise DataError(f"{path} line {line}: not UTF-8 text (byte 0x{data[e.start]:02x} at "
                        f"offset {e.start}); save the file as UTF-8") from None
    yield csv.reader(io.StringIO(text, newline=""))


def check_header(path, header):
    """A DataError for a header naming a column twice (which one is meant is unclear)."""
    seen = [c for i, c in enumerate(header) if c in header[:i]]
    if seen:
        raise DataError(f"{path} line 1: column(s) {sorted(set(seen))} appear more than once in "
                        f"the header {header}")


def not_a_file(path, what):
    """Why `path` is no readable file: missing, or a folder."""
    if os.path.isdir(path):
        return f"{what} path {path} is a folder, not a file"
    return f"{what} file not found: {path}"


def check_on_error(on_error):
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")


def parse_label(text, where, column):
    try:
        v = parse_number(text)
    except (TypeError, ValueError):
        raise DataError(f"{where}: label {text!r} in column {column!r} is not a number") from None
    if not np.isfinite(v):
        raise DataError(f"{where}: label {text!r} in column {column!r} is NaN or infinite")
    return v
