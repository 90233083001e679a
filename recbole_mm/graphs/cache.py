"""Content-keyed on-disk cache for built graphs, with atomic writes.

``cached_tensor(cache_dir, name, key, builder)`` returns ``builder()``'s result, stored at
``<cache_dir>/<name>-<hash16>.pt`` where the hash is SHA-256 of the canonical JSON of ``key``
plus :data:`CACHE_VERSION`. Put in ``key`` everything the result depends on: the dataset
fingerprint (features + training split), every parameter, a code version. Values in ``key``
may be JSON scalars, lists, dicts, numpy arrays, torch tensors or scipy sparse matrices (the
last three are replaced by a content hash, see :func:`fingerprint`).

Writes go to a temporary file in the same folder, are flushed and fsynced, then moved into
place with ``os.replace`` (atomic on POSIX), so a build killed half-way leaves either no file
or the previous good one, never a truncated cache. Every file is sealed
(:func:`recbole_mm.utils.write_sealed`): a header line holds the SHA-256 of the stored bytes and
the fingerprint of the key, checked before anything is unpickled. On read, the seal, the
checksum, our magic string and exactly the same key must all match; anything else (flipped or
missing bytes, another program's file, an older format, a hash collision) triggers a warning and
a rebuild that overwrites it, so a damaged cache is never used.

Concurrent builders (the ranks of a DDP job, Ray trials, benchmark cells sharing one cache
folder) build each entry once: the build holds an exclusive lock (``flock``) on a small
``.<entry>.lock`` file next to the entry, removed once the entry is written; a process that finds
the lock taken waits for it, then loads what the holder wrote. The kernel releases the lock when
its holder dies, so a killed build never blocks the next one. Where the filesystem offers no ``flock`` (or off Linux
and macOS) every process builds for itself, which costs time but is still safe (atomic writes).

The stored value can be anything ``torch.save`` pickles (tensors, tuples, dicts, scipy
matrices). Files are loaded with ``weights_only=False``: only point ``cache_dir`` at folders
this project writes.
"""
import contextlib
import hashlib
import io
import json
import os
import warnings

import numpy as np
import torch

from recbole_mm.utils import SealBroken, read_sealed, write_sealed

__all__ = ["cached_tensor", "fingerprint", "cache_path", "CACHE_VERSION"]

CACHE_VERSION = 2  # 2: sealed files (checksum + key fingerprint in a header line)
_MAGIC = "recbole_mm-graph-cache"


def fingerprint(obj):
    """Hex SHA-256 of the content of an array, tensor, scipy matrix or JSON-able value."""
    h = hashlib.sha256()
    _update(h, obj)
    return h.hexdigest()


def _update(h, obj):
    if isinstance(obj, torch.Tensor):
        if obj.is_sparse:
            obj = obj.coalesce()
            _update(h, ("torch.sparse", list(obj.shape), obj.indices(), obj.values()))
            return
        arr = obj.detach().cpu().contiguous().numpy()
        h.update(f"tensor:{arr.dtype}:{arr.shape}:".encode())
        h.update(arr.tobytes())
    elif isinstance(obj, np.ndarray):
        arr = np.ascontiguousarray(obj)
        h.update(f"ndarray:{arr.dtype}:{arr.shape}:".encode())
        h.update(arr.tobytes())
    elif hasattr(obj, "tocsr") and hasattr(obj, "nnz"):  # scipy sparse
        csr = obj.tocsr()
        csr.sort_indices()
        _update(h, ("scipy.sparse", list(csr.shape), csr.indptr, csr.indices, csr.data))
    elif isinstance(obj, (list, tuple)):
        h.update(f"seq:{len(obj)}:".encode())
        for item in obj:
            _update(h, item)
    elif isinstance(obj, dict):
        h.update(f"dict:{len(obj)}:".encode())
        for k in sorted(obj, key=str):
            _update(h, str(k))
            _update(h, obj[k])
    else:
        h.update(("scalar:" + json.dumps(obj, sort_keys=True, default=str)).encode())


def _canonical(key):
    """JSON-able version of ``key``: arrays/tensors/sparse matrices become content hashes."""
    if isinstance(key, dict):
        return {str(k): _canonical(v) for k, v in sorted(key.items(), key=lambda kv: str(kv[0]))}
    if isinstance(key, (list, tuple)):
        return [_canonical(v) for v in key]
    if isinstance(key, (torch.Tensor, np.ndarray)) or (hasattr(key, "tocsr") and hasattr(key, "nnz")):
        return "sha256:" + fingerprint(key)
    if isinstance(key, (np.integer, np.floating, np.bool_)):
        return key.item()
    if key is None or isinstance(key, (str, int, float, bool)):
        return key
    return str(key)


def cache_path(cache_dir, name, key):
    """Path and canonical key text of the cache entry for ``(name, key)``."""
    text = json.dumps({"version": CACHE_VERSION, "key": _canonical(key)}, sort_keys=True)
    digest = hashlib.sha256(text.encode()).hexdigest()[:16]
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in str(name))
    return os.path.join(str(cache_dir), f"{safe}-{digest}.pt"), text


def _key_fingerprint(key_text):
    return hashlib.sha256(key_text.encode()).hexdigest()[:32]


def _load(path, key_text):
    payload = read_sealed(path, _key_fingerprint(key_text))
    record = torch.load(io.BytesIO(payload), map_location="cpu", weights_only=False)
    if not isinstance(record, dict) or record.get("magic") != _MAGIC:
        raise SealBroken("not a recbole_mm graph cache file")
    if record.get("key") != key_text:
        raise SealBroken("cache file was built for a different key")
    return record["value"]


def _save(record, path):
    buffer = io.BytesIO()
    torch.save(record, buffer)
    write_sealed(path, buffer.getvalue(), _key_fingerprint(record["key"]))


def cached_tensor(cache_dir, name, key, builder, map_location=None):
    """Load ``name`` for ``key`` from ``cache_dir``, or build it with ``builder()`` and store it.

    ``cache_dir=None`` disables caching (the builder always runs). ``map_location`` moves
    loaded tensors (e.g. ``'cuda'``); a freshly built value is returned as built.
    """
    if cache_dir is None:
        return builder()
    os.makedirs(cache_dir, exist_ok=True)
    path, key_text = cache_path(cache_dir, name, key)
    value = _try_load(path, key_text)  # the common case, without waiting on a lock
    if value is None:
        with _build_lock(path):
            value = _try_load(path, key_text)  # built by whoever held the lock before us
            if value is None:
                value = builder()
                _save({"magic": _MAGIC, "version": CACHE_VERSION, "key": key_text, "value": value}, path)
                return value
    return _move(value, map_location) if map_location is not None else value


def _try_load(path, key_text):
    """The stored value, or None when there is none or it fails its check (then it is rebuilt)."""
    if not os.path.exists(path):
        return None
    try:
        return _load(path, key_text)
    except Exception as err:  # noqa: BLE001 - corrupt, truncated or foreign: never used, rebuilt
        warnings.warn(f"graph cache {path} failed its check ({err}); rebuilding it")
        return None


@contextlib.contextmanager
def _build_lock(path):
    """Exclusive ``flock`` on ``.<entry>.lock`` beside ``path`` for the duration of one build."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX: build without a lock
        yield
        return
    folder, base = os.path.split(path)
    lock_path = os.path.join(folder, f".{base}.lock")
    with open(lock_path, "a+b") as handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        except OSError:  # no flock on this filesystem: build without a lock (atomic writes stay safe)
            yield
            return
        try:
            yield
            if os.path.exists(path):  # built: the lock file goes (a waiter holding it open finds the entry)
                with contextlib.suppress(FileNotFoundError):
                    os.remove(lock_path)
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _move(value, device):
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, (list, tuple)):
        return type(value)(_move(v, device) for v in value)
    if isinstance(value, dict):
        return {k: _move(v, device) for k, v in value.items()}
    return value
