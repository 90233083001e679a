"""Small helpers shared across recbole_mm."""
import os
import tempfile


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
