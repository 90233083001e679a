"""Image features from a local image folder with a local vision model (nothing downloaded).

``python -m recbole_mm.prepare images --name NAME --dir DIR --model LOCAL_MODEL_DIR``

Items are the tokens of ``<out>/NAME/NAME.item`` (else the ``item_id`` column of
``NAME.inter``), sorted (numerically when all are integers). Item ``t``'s image is
``DIR/t.<ext>`` for ext in jpg, jpeg, png, webp, bmp, gif (any case). Items without an image,
or whose image cannot be decoded, get no row, so the dataset marks their image missing (both
counted in the manifest, with examples). Output: ``image_feat.npy`` (``--output``) with its row
order in ``image_item_ids.txt``, declared in ``NAME.yaml`` next to the data. Encoding is
resumable and cached by the SHA-1 of each image file (see :func:`.encoders.encode_resumable`).
"""
import hashlib
import os

from .encoders import encode_resumable, encoder_cache_dir, folder_digest, load_image_encoder, write_feature_rows
from .io import PrepareError, feature_entry, file_digest, manifest_matches, update_dataset_yaml, write_manifest
from .text import FEATURE_CACHE

EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif")
REPORT_LIMIT = 50


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
    for entry in sorted(os.listdir(img_dir)):
        stem, ext = os.path.splitext(entry)
        if ext.lower() in EXTENSIONS:
            by_stem.setdefault(stem, os.path.join(img_dir, entry))
    return {t: by_stem[t] for t in tokens if t in by_stem}


def prepare_images(name, img_dir, model, out="dataset", batch_size=32, output="image_feat.npy",
                   force=False, show_progress=True, log=print, chunk_size=1024):
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
    identity = f"vision:{os.path.abspath(model)}:{folder_digest(model)}"
    keys = [file_digest(paths[t]) if t in paths else None for t in tokens]
    inputs = {"command": "images", "tokens": hashlib.sha1("\n".join(tokens).encode()).hexdigest(),
              "content": hashlib.sha1(repr(keys).encode()).hexdigest(), "model": identity, "output": output}
    if not force and manifest_matches(folder, {"inputs": inputs}, command):
        log(f"{os.path.join(folder, output)} is up to date; nothing to do. Use --force to redo.")
        return folder
    encoder = {}

    def decode(path):
        try:
            with Image.open(path) as img:
                return img.convert("RGB")
        except Exception:  # noqa: BLE001 - an undecodable image is a missing image
            return None

    def encode_batch(batch_paths):
        images = [decode(p) for p in batch_paths]
        good = [img for img in images if img is not None]
        if not good:
            return [None] * len(images)
        if not encoder:  # load the model only when something is left to encode
            encoder["encode"] = load_image_encoder(model)[0]
        vectors = iter(encoder["encode"](good))
        return [None if img is None else next(vectors) for img in images]

    unique = {}
    for t, k in zip(tokens, keys):
        if k is not None:
            unique.setdefault(k, paths[t])
    vectors = encode_resumable(list(unique), list(unique.values()), encode_batch,
                               encoder_cache_dir(os.path.join(folder, FEATURE_CACHE), "image", identity),
                               identity, batch_size=batch_size, chunk_size=chunk_size,
                               desc="encode images", show_progress=show_progress)
    unreadable = [t for t, k in zip(tokens, keys) if k is not None and vectors.get(k) is None]
    if len(unreadable) == len(paths):
        raise PrepareError(f"none of the {len(paths)} images in {img_dir} could be decoded. Fix: "
                           "check the files (jpg/png/webp/bmp/gif).")
    n_rows, dim = write_feature_rows(folder, output, ids_name, tokens, keys, vectors)
    modality, entry = feature_entry(output, ids_name, dim)
    yaml_name = update_dataset_yaml(folder, name, features={modality: entry})
    without = [t for t in tokens if t not in paths]
    report = {"items": len(tokens), "items_with_image": n_rows,
              "items_without_image": len(without), "items_without_image_examples": without[:REPORT_LIMIT],
              "unreadable_images": len(unreadable), "unreadable_examples": unreadable[:REPORT_LIMIT],
              "dim": dim, "image_encoder": identity}
    write_manifest(folder, {"inputs": inputs, "outputs": [output, ids_name, yaml_name], "report": report},
                   command)
    log(f"wrote {os.path.join(folder, output)}: {n_rows} of {len(tokens)} items have an image "
        f"({len(without)} without one, {len(unreadable)} unreadable"
        + (f", e.g. {', '.join(unreadable[:5])}" if unreadable else "") + "; marked missing), dim "
        f"{dim}")
    log(f"declared in {os.path.join(folder, yaml_name)}: multimodal_features: {{{modality}: "
        f"{{file: {output}, ids: {ids_name}, dim: {dim}}}}}")
    return folder
