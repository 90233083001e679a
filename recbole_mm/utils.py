"""Small helpers shared across recbole_mm."""
import os
import tempfile

import numpy as np


def atomic_write(path, write, binary=True):
    """Write a file atomically: ``write(handle)`` fills a temp file in the same folder, which is
    flushed, fsynced and then renamed over ``path``. A crash half-way leaves the old file (or
    none), never a torn one. ``binary=False`` opens the temp file as UTF-8 text."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-" + os.path.basename(path) + ".")
    try:
        mode = {"mode": "wb"} if binary else {"mode": "w", "encoding": "utf-8", "newline": "\n"}
        with os.fdopen(fd, **mode) as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1, _MIX2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)


def _mix64(x):
    """SplitMix64 finaliser: a bijection of uint64 whose outputs look independent and uniform."""
    x = (x ^ (x >> np.uint64(30))) * _MIX1
    x = (x ^ (x >> np.uint64(27))) * _MIX2
    return x ^ (x >> np.uint64(31))


def keyed_randint(low, high, *keys):
    """Integers uniform in ``[low, high)`` that are a deterministic function of the integer
    ``keys`` (scalars or arrays, broadcast together), as a counter-based generator: the value of
    one element never depends on the other elements, their order or how many there are.
    (Modulo bias is below ``(high - low) / 2**64``.)"""
    arrays = [np.asarray(key).astype(np.int64).astype(np.uint64) for key in keys]
    state = np.zeros(np.broadcast(*arrays).shape, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for key in arrays:
            state = _mix64(state + _GOLDEN + key)
    return np.int64(low) + (state % np.uint64(high - low)).astype(np.int64)
