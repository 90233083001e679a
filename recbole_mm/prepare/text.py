"""Text features for any RecBole dataset with an item text field.

``python -m recbole_mm.prepare text --name NAME --field title[,brand,...] [--model DIR]``
reads ``<out>/NAME/NAME.item`` (else ``NAME.text``), joins the named fields of every item with
". " (empty values skipped), encodes them in batches with the offline MiniLM (or a local
model, see :mod:`.encoders`) and writes ``text_feat.npy`` (``--output``) with its row order in
``text_item_ids.txt`` (``<stem>_item_ids.txt`` for another ``--output``). Items whose fields
are all empty get no row (missing). Declare it as
``multimodal_features: {text: {file: text_feat.npy, ids: text_item_ids.txt}}``.
"""
import os

import numpy as np

from .encoders import encode_texts
from .io import (PrepareError, atomic_save_npy, atomic_write_text, file_digest, manifest_matches,
                 write_manifest)


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
                 force=False, show_progress=True, log=print):
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
    inputs = {"command": "text", "source": os.path.basename(source), "digest": file_digest(source),
              "fields": fields, "model": model, "output": output}
    if not force and manifest_matches(folder, {"inputs": inputs}, command):
        log(f"{os.path.join(folder, output)} is up to date; nothing to do. Use --force to redo.")
        return folder
    tokens, texts = read_item_fields(source, fields)
    keep = [i for i, t in enumerate(texts) if t]
    if len(set(tokens)) != len(tokens):
        raise PrepareError(f"{source} lists an item more than once. Fix: one row per item.")
    if not keep:
        raise PrepareError(f"every item has empty {fields} in {source}.")
    emb, description = encode_texts([texts[i] for i in keep], model, batch_size, show_progress)
    atomic_save_npy(os.path.join(folder, output), emb.astype(np.float32))
    atomic_write_text(os.path.join(folder, ids_name), "".join(f"{tokens[i]}\n" for i in keep))
    report = {"items": len(tokens), "items_with_text": len(keep), "dim": int(emb.shape[1]),
              "text_encoder": description}
    write_manifest(folder, {"inputs": inputs, "outputs": [output, ids_name], "report": report},
                   command)
    log(f"wrote {os.path.join(folder, output)}: {len(keep)} of {len(tokens)} items, dim {emb.shape[1]}")
    log(f"dataset yaml: multimodal_features: {{text: {{file: {output}, ids: {ids_name}, "
        f"dim: {emb.shape[1]}}}}}")
    return folder
