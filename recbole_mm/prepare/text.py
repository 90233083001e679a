"""Text features for any RecBole dataset with an item text field.

``python -m recbole_mm.prepare text --name NAME --field title[,brand,...] [--model DIR]``
reads ``<out>/NAME/NAME.item`` (else ``NAME.text``), joins the named fields of every item with
". " (empty values skipped), encodes them in batches with the offline MiniLM (or a local
model, see :mod:`.encoders`) and writes ``text_feat.npy`` (``--output``) with its row order in
``text_item_ids.txt`` (``<stem>_item_ids.txt`` for another ``--output``). Items whose fields
are all empty get no row, so the dataset marks their text missing. Encoding is resumable and
cached by content (``<out>/NAME/feature_cache/``, see :func:`.encoders.encode_resumable`). The
modality is declared in ``NAME.yaml`` next to the data
(``multimodal_features: {text: {file: text_feat.npy, ids: text_item_ids.txt}}``).
"""
import os

from .encoders import (content_hash, encode_resumable, encoder_cache_dir, load_text_encoder,
                       text_encoder_identity, write_feature_rows)
from .io import PrepareError, feature_entry, file_digest, manifest_matches, update_dataset_yaml, write_manifest

FEATURE_CACHE = "feature_cache"


def read_item_fields(path, fields):
    import pandas as pd

    frame = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False, quoting=3)
    names = {c.split(":")[0]: c for c in frame.columns}
    if "item_id" not in names:
        raise PrepareError(f"{path} has no item_id column (found {list(names)}). "
                           "Fix: RecBole atomic files name it item_id:token.")
    missing = [f for f in fields if f not in names]
    if missing:
        raise PrepareError(f"{path} has no field {missing}; fields are {list(names)}. "
                           "Fix: pass one of them with --field.")
    tokens = frame[names["item_id"]].str.strip().tolist()
    texts = [". ".join(v.strip() for v in values if v.strip())
             for values in zip(*(frame[names[f]].tolist() for f in fields))]
    return tokens, texts


def prepare_text(name, field, out="dataset", model=None, batch_size=64, output="text_feat.npy",
                 force=False, show_progress=True, log=print, chunk_size=1024):
    fields = [f.strip() for f in field.split(",") if f.strip()]
    if not fields:
        raise PrepareError("--field is empty. Fix: name the item text field, e.g. --field title.")
    folder = os.path.join(out, name)
    candidates = [os.path.join(folder, f"{name}.item"), os.path.join(folder, f"{name}.text")]
    sources = [p for p in candidates if os.path.isfile(p)]
    if not sources:
        raise PrepareError(f"neither {candidates[0]} nor {candidates[1]} exists. Fix: put the "
                           "dataset's item file there or pass --out (the data root).")
    source = sources[0]
    if len(sources) > 1:  # use the first file that has every field
        for path in sources:
            with open(path, encoding="utf-8") as f:
                header = [h.split(":")[0] for h in f.readline().rstrip("\r\n").split("\t")]
            if all(name in header for name in fields):
                source = path
                break
    stem = output[:-4] if output.endswith(".npy") else output
    ids_name = "text_item_ids.txt" if output == "text_feat.npy" else f"{stem}_item_ids.txt"
    command = f"text.{stem}"
    identity = text_encoder_identity(model)
    inputs = {"command": "text", "source": os.path.basename(source), "digest": file_digest(source),
              "fields": fields, "model": identity, "output": output}
    if not force and manifest_matches(folder, {"inputs": inputs}, command):
        log(f"{os.path.join(folder, output)} is up to date; nothing to do. Use --force to redo.")
        return folder
    tokens, texts = read_item_fields(source, fields)
    if len(set(tokens)) != len(tokens):
        raise PrepareError(f"{source} lists an item more than once. Fix: one row per item.")
    keys = [content_hash(t) if t else None for t in texts]
    if not any(keys):
        raise PrepareError(f"every item has empty {fields} in {source}.")
    encoder = {}

    def encode_batch(batch):
        if not encoder:  # load the model only when something is left to encode
            encoder["encode"], encoder["description"] = load_text_encoder(model)
        return list(encoder["encode"](batch))

    unique = dict.fromkeys(k for k in keys if k)
    by_key = {k: t for k, t in zip(keys, texts) if k}
    vectors = encode_resumable(list(unique), [by_key[k] for k in unique], encode_batch,
                               encoder_cache_dir(os.path.join(folder, FEATURE_CACHE), "text", identity),
                               identity, batch_size=batch_size, chunk_size=chunk_size,
                               desc="encode text", show_progress=show_progress)
    n_rows, dim = write_feature_rows(folder, output, ids_name, tokens, keys, vectors)
    modality, entry = feature_entry(output, ids_name, dim)
    yaml_name = update_dataset_yaml(folder, name, features={modality: entry})
    report = {"items": len(tokens), "items_with_text": n_rows, "items_without_text": len(tokens) - n_rows,
              "dim": dim, "text_encoder": identity, "distinct_texts": len(unique)}
    write_manifest(folder, {"inputs": inputs, "outputs": [output, ids_name, yaml_name], "report": report},
                   command)
    log(f"wrote {os.path.join(folder, output)}: {n_rows} of {len(tokens)} items, dim {dim} "
        f"({len(tokens) - n_rows} without text: marked missing)")
    log(f"declared in {os.path.join(folder, yaml_name)}: multimodal_features: {{{modality}: "
        f"{{file: {output}, ids: {ids_name}, dim: {dim}}}}}")
    return folder
