"""Image features from a local image folder with a local vision model (nothing downloaded).

``python -m recbole_mm.prepare images --name NAME --dir DIR --model LOCAL_MODEL_DIR``

Items are the tokens of ``<out>/NAME/NAME.item`` (else the ``item_id`` column of
``NAME.inter``), sorted (numerically when all are integers). Item ``t``'s image is
``DIR/t.<ext>`` for ext in jpg, jpeg, png, webp, bmp, gif (any case). Items without an image,
or whose image cannot be decoded, get an all-zero row, which the dataset marks as missing
(counted in the manifest). Output: ``image_feat.npy`` (``--output``) with its row order in
``image_item_ids.txt``; declare
``multimodal_features: {image: {file: image_feat.npy, ids: image_item_ids.txt}}``.
"""
import hashlib
import os

import numpy as np

from .encoders import load_image_encoder
from .io import (PrepareError, atomic_save_npy, atomic_write_text, manifest_matches, progress,
                 write_manifest)

EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif")


def dataset_item_tokens(folder, name):
    import pandas as pd

    for fname in (f"{name}.item", f"{name}.inter"):
        path = os.path.join(folder, fname)
        if not os.path.isfile(path):
            continue
        frame = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False, quoting=3)
        cols = {c.split(":")[0]: c for c in frame.columns}
        if "item_id" not in cols:
            raise PrepareError(f"{path} has no item_id column. Fix: RecBole atomic header item_id:token.")
        tokens = sorted(set(frame[cols["item_id"]].str.strip()))
        if all(t.isdigit() for t in tokens):
            tokens.sort(key=int)
        return tokens
    raise PrepareError(f"no {name}.item or {name}.inter in {folder}. Fix: convert the dataset first "
                       "or pass --out (the data root).")


def find_images(img_dir, tokens):
    by_stem = {}
    for entry in os.listdir(img_dir):
        stem, ext = os.path.splitext(entry)
        if ext.lower() in EXTENSIONS:
            by_stem.setdefault(stem, os.path.join(img_dir, entry))
    return {t: by_stem[t] for t in tokens if t in by_stem}


def _dir_digest(model_dir, paths):
    h = hashlib.sha1()
    for root in [model_dir]:
        for entry in sorted(os.listdir(root)):
            st = os.stat(os.path.join(root, entry))
            h.update(f"{entry}:{st.st_size}:{st.st_mtime_ns};".encode())
    for token, path in sorted(paths.items()):
        st = os.stat(path)
        h.update(f"{token}:{os.path.basename(path)}:{st.st_size}:{st.st_mtime_ns};".encode())
    return h.hexdigest()


def prepare_images(name, img_dir, model, out="dataset", batch_size=32, output="image_feat.npy",
                   force=False, show_progress=True, log=print):
    from PIL import Image

    folder = os.path.join(out, name)
    if not os.path.isdir(img_dir):
        raise PrepareError(f"image folder {img_dir} does not exist. Fix: --dir must hold "
                           "<item token>.jpg/.png files.")
    if not os.path.isdir(model):
        raise PrepareError(f"model folder {model} does not exist. Fix: pass a local vision model "
                           "directory (saved with save_pretrained); nothing is downloaded.")
    tokens = dataset_item_tokens(folder, name)
    paths = find_images(img_dir, tokens)
    if not paths:
        raise PrepareError(f"no image in {img_dir} is named after an item token of {name} "
                           f"(e.g. {tokens[0]}.jpg). Fix: name files <item token>.<jpg|png>.")
    stem = output[:-4] if output.endswith(".npy") else output
    ids_name = "image_item_ids.txt" if output == "image_feat.npy" else f"{stem}_item_ids.txt"
    command = f"images.{stem}"
    inputs = {"command": "images", "tokens": hashlib.sha1("\n".join(tokens).encode()).hexdigest(),
              "content": _dir_digest(model, paths), "model": os.path.abspath(model), "output": output}
    if not force and manifest_matches(folder, {"inputs": inputs}, command):
        log(f"{os.path.join(folder, output)} is up to date; nothing to do. Use --force to redo.")
        return folder
    encode, description = load_image_encoder(model)
    with_image = [t for t in tokens if t in paths]
    rows, feats, unreadable = {}, [], []
    for s in progress(range(0, len(with_image), batch_size), desc="encode images",
                      enabled=show_progress, unit="batch"):
        batch, names = [], []
        for t in with_image[s:s + batch_size]:
            try:
                with Image.open(paths[t]) as img:
                    batch.append(img.convert("RGB"))
                names.append(t)
            except Exception:  # noqa: BLE001 - an undecodable image is a missing image
                unreadable.append(t)
        if batch:
            emb = np.asarray(encode(batch), dtype=np.float32)
            for t, e in zip(names, emb):
                rows[t] = len(feats)
                feats.append(e)
    if not feats:
        raise PrepareError(f"none of the images in {img_dir} could be decoded.")
    matrix = np.zeros((len(tokens), feats[0].shape[0]), dtype=np.float32)
    for r, t in enumerate(tokens):
        if t in rows:
            matrix[r] = feats[rows[t]]
    atomic_save_npy(os.path.join(folder, output), matrix)
    atomic_write_text(os.path.join(folder, ids_name), "".join(f"{t}\n" for t in tokens))
    report = {"items": len(tokens), "items_with_image": len(rows),
              "items_without_image": len(tokens) - len(with_image),
              "unreadable_images": len(unreadable), "unreadable_examples": unreadable[:50],
              "dim": int(matrix.shape[1]), "image_encoder": description}
    write_manifest(folder, {"inputs": inputs, "outputs": [output, ids_name], "report": report},
                   command)
    log(f"wrote {os.path.join(folder, output)}: {len(rows)} of {len(tokens)} items have an image "
        f"({len(unreadable)} unreadable), dim {matrix.shape[1]}")
    log(f"dataset yaml: multimodal_features: {{image: {{file: {output}, ids: {ids_name}, "
        f"dim: {matrix.shape[1]}}}}}")
    return folder
