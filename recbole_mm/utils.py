"""Small helpers shared across recbole_mm: atomic writes, run stamps, the run's log file."""
import logging
import os
import secrets
import time

import numpy as np

from recbole_mm.errors import UserPathError


def atomic_write(path, write, binary=True):
    """Write a file atomically: ``write(handle)`` fills a temp file in the same folder, which is
    flushed, fsynced and then renamed over ``path``. A crash half-way leaves the old file (or
    none), never a torn one. ``binary=False`` opens the temp file as UTF-8 text.

    The file gets the permissions ``open()`` would give it: those of the file it replaces, else
    0o666 less the process umask (the temp file is created with that mode, so the kernel applies
    the umask; ``tempfile.mkstemp`` would make every file private, 0o600).
    """
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    for _ in range(100):
        tmp = os.path.join(folder, f".tmp-{os.path.basename(path)}.{secrets.token_hex(4)}")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
            break
        except FileExistsError:
            continue
    else:  # pragma: no cover - 100 random names taken
        raise FileExistsError(f"cannot create a temporary file next to {path}")
    try:
        if os.path.exists(path):
            os.chmod(tmp, os.stat(path).st_mode & 0o7777)
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
def writable_folder(folder):
    """True when ``folder`` exists and is writable, or could be created: its nearest existing
    ancestor is a writable folder. Creates nothing."""
    path = os.path.abspath(folder)
    while not os.path.exists(path):
        parent = os.path.dirname(path)
        if parent == path:
            return False
        path = parent
    return os.path.isdir(path) and os.access(path, os.W_OK | os.X_OK)


def run_stamp():
    """``<time to the second>-<process id>-<random>``: RecBole's time stamp made unique, for file
    names of runs that may start in the same second (parallel benchmark cells, hyper trials)."""
    return f"{time.strftime('%b-%d-%Y_%H-%M-%S')}-{os.getpid()}-{secrets.token_hex(2)}"


_HANDLER_MARK = "_recbole_mm_run_handler"


def init_logger(config, log_root="log"):
    """RecBole's ``init_logger`` with a log file no other run shares.

    Same folder (``log/<model>/``), format and ``state`` levels as RecBole; the file is
    ``<model>-<dataset>-<run stamp>.log``. Handlers installed by an earlier call are replaced
    (RecBole's ``logging.basicConfig`` keeps the first run's file for every later run of the
    process). Returns the log file path.
    """
    import colorlog
    from colorama import init as colorama_init
    from recbole.utils.logger import RemoveColorFilter, log_colors_config

    colorama_init(autoreset=True)  # as RecBole's init_logger

    folder = os.path.join(log_root, str(config["model"]))
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as err:
        raise UserPathError(f"cannot create the log folder {os.path.abspath(folder)} ({err.strerror}). "
                            "Fix: run from a folder you can write to.") from None
    path = os.path.join(folder, f"{config['model']}-{config['dataset']}-{run_stamp()}.log")
    levels = {"info": logging.INFO, "debug": logging.DEBUG, "error": logging.ERROR, "warning": logging.WARNING,
              "critical": logging.CRITICAL}
    level = levels.get(str(config["state"]).lower(), logging.INFO)
    file_handler = logging.FileHandler(path)
    file_handler.setLevel(level)
    file_handler.setFormatter(logging.Formatter("%(asctime)-15s %(levelname)s  %(message)s", "%a %d %b %Y %H:%M:%S"))
    file_handler.addFilter(RemoveColorFilter())
    stream_handler = logging.StreamHandler()
    stream_handler.setLevel(level)
    stream_handler.setFormatter(colorlog.ColoredFormatter(
        "%(log_color)s%(asctime)-15s %(levelname)s  %(message)s", "%d %b %H:%M", log_colors=log_colors_config))
    root = logging.getLogger()
    for handler in [h for h in root.handlers if getattr(h, _HANDLER_MARK, False)]:
        root.removeHandler(handler)
        handler.close()
    for handler in (stream_handler, file_handler):
        setattr(handler, _HANDLER_MARK, True)
        root.addHandler(handler)
    root.setLevel(level)
    return path


# --------------------------------------------------------------------------- sealed files
_SEAL = b"recbole_mm-sealed"


class SealBroken(ValueError):
    """A sealed file that is truncated, edited or not sealed at all (internal: callers rebuild)."""


class SealStale(SealBroken):
    """An intact sealed file built from other inputs (internal: callers rebuild, no warning needed)."""


def write_sealed(path, payload, fingerprint):
    """Atomically write ``payload`` (bytes) behind a header line holding its SHA-256 and
    ``fingerprint`` (a short text naming what the payload was built from)."""
    import hashlib

    if any(c.isspace() for c in fingerprint):
        raise ValueError("fingerprint must not contain white space")
    header = b"%s v1 sha256=%s fingerprint=%s\n" % (_SEAL, hashlib.sha256(payload).hexdigest().encode(),
                                                    fingerprint.encode())

    def write(handle):
        handle.write(header)
        handle.write(payload)

    atomic_write(path, write)


def read_sealed(path, fingerprint=None):
    """The payload of a file written by :func:`write_sealed`, after checking its SHA-256 (and,
    when given, that it was built from ``fingerprint``). Raises :class:`SealBroken` otherwise."""
    import hashlib

    with open(path, "rb") as handle:
        header = handle.readline(512)
        fields = header.split()
        if len(fields) != 4 or fields[0] != _SEAL or fields[1] != b"v1" or not header.endswith(b"\n"):
            raise SealBroken("no recbole_mm seal (written by another program or version)")
        found = fields[3].decode(errors="replace").removeprefix("fingerprint=")
        if fingerprint is not None and found != fingerprint:
            raise SealStale("built from other inputs (fingerprint differs)")
        payload = handle.read()
    if hashlib.sha256(payload).hexdigest() != fields[2].decode(errors="replace").removeprefix("sha256="):
        raise SealBroken("checksum mismatch (the file is truncated or corrupted)")
    return payload


# --------------------------------------------------------------------------- file checksums
_SHA256_MEMO = {}


def file_sha256(path, chunk=1 << 20):
    """Hex SHA-256 of a file's bytes, remembered per (path, size, mtime) within the process."""
    import hashlib

    stat = os.stat(path)
    memo_key = (os.path.abspath(path), stat.st_size, stat.st_mtime_ns)
    if memo_key not in _SHA256_MEMO:
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(chunk), b""):
                digest.update(block)
        _SHA256_MEMO[memo_key] = digest.hexdigest()
    return _SHA256_MEMO[memo_key]


def output_checksums(folder, names):
    """``{name: sha256}`` of the files ``names`` in ``folder`` (what a manifest records)."""
    return {name: file_sha256(os.path.join(folder, name)) for name in names}


def damaged_outputs(folder, checksums):
    """Names in ``checksums`` whose file in ``folder`` is missing or no longer has that checksum."""
    damaged = []
    for name, expected in (checksums or {}).items():
        path = os.path.join(folder, name)
        if not os.path.isfile(path) or file_sha256(path) != expected:
            damaged.append(name)
    return damaged


# glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
HEAP_KEPT_BYTES = 1 << 30  # freed memory kept at the top of the heap before it goes back to the OS
HEAP_SERVED_BYTES = 32 << 20  # blocks up to this size come from the heap (glibc's largest allowed)
_heap_reuse = {"applied": None}


def keep_freed_memory():
    """Make glibc's allocator reuse freed memory instead of unmapping it (the ``cpu_keep_freed_memory``
    key, applied once per process by the recbole_mm trainers on CPU).

    By default glibc serves large blocks (the activations of a training step: tens of MB) with a
    fresh ``mmap`` and returns them on ``free``, so every step touches new pages and pays a page
    fault per 4 KiB: 1,600-10,600 faults per MuSTRec step on Baby scale, depending on where glibc's
    adaptive threshold settles (docs/benchmarks/mustrec.md; the step was 0-5 % faster without them,
    within the run-to-run spread). With blocks up to 32 MiB served from the heap and up to 1 GiB of
    freed memory kept there, the next step reuses the same pages. The setting holds for the whole
    process (every DDP rank or Ray worker that builds a CPU trainer sets its own): it keeps its
    peak memory instead of giving freed memory back between steps. Returns whether it applied
    (False without glibc's ``mallopt``: macOS, Windows, musl)."""
    if _heap_reuse["applied"] is None:
        import ctypes
        import sys

        try:
            mallopt = ctypes.CDLL(None).mallopt if sys.platform.startswith("linux") else None
        except (OSError, AttributeError):  # not glibc (musl)
            mallopt = None
        if mallopt is None:  # glibc's mallopt is Linux-only (not macOS, Windows, musl)
            _heap_reuse["applied"] = False
        else:
            mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
            _heap_reuse["applied"] = bool(mallopt(_M_TRIM_THRESHOLD, HEAP_KEPT_BYTES)
                                          and mallopt(_M_MMAP_THRESHOLD, HEAP_SERVED_BYTES))
    return _heap_reuse["applied"]
