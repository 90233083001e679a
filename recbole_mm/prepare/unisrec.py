"""UniSRec/Amazon format -> recbole_mm dataset folder.

Input (``--src DIR``): ``NAME.train.inter``, ``NAME.valid.inter``, ``NAME.test.inter``
(header ``user_id:token item_id_list:token_seq item_id:token``; one row per prefix, lists
space-separated, possibly truncated to the last 50 items) and ``NAME.text``
(``item_id:token text:token_seq``).

Each user's full sequence is rebuilt as the item list of their first row (train, then valid,
then test, in file order) followed by the target of every row; every row's item list must be
the (possibly truncated) prefix this implies, otherwise the input is rejected with the user
named. Output (``<out>/<NAME>/``):

- ``NAME.inter``: ``user_id:token item_id:token timestamp:float``, ``timestamp`` = 0-based
  position in the user's sequence (orders items within a user only), so RecBole's
  leave-one-out reproduces UniSRec's valid/test targets;
- ``NAME.text``: ``item_id:token text:token_seq`` (tabs/newlines in text become spaces);
- ``NAME.yaml``: the dataset's config (``item_text_file``, ``multimodal_features``), read by
  recbole_mm for ``--dataset=NAME``;
- ``text_feat.npy`` (unless ``--no-text``): integer item tokens -> row r = token r (no ids
  file; rows of tokens without text are zero = missing); other tokens -> rows in the order
  of ``text_item_ids.txt``.
"""
import os

import numpy as np

from .encoders import encode_texts
from .io import (PrepareError, atomic_save_npy, atomic_write, atomic_write_text, feature_entry,
                 file_digest, manifest_matches, progress, require_file, update_dataset_yaml,
                 write_manifest)

SPLITS = ("train", "valid", "test")


def _read_rows(path):
    with open(path, encoding="utf-8") as f:
        header = [h.split(":")[0] for h in f.readline().rstrip("\r\n").split("\t")]
        needed = ["user_id", "item_id_list", "item_id"]
        if any(h not in header for h in needed):
            raise PrepareError(f"{path} header must contain {needed}, found {header}. Fix: UniSRec "
                               "files are 'user_id:token<TAB>item_id_list:token_seq<TAB>item_id:token'.")
        cu, cl, ci = (header.index(h) for h in needed)
        rows = []
        for n, line in enumerate(f, start=2):
            if not line.strip():
                continue
            parts = line.rstrip("\r\n").split("\t")
            if len(parts) < len(header):
                raise PrepareError(f"{path}, line {n}: expected {len(header)} tab-separated fields.")
            rows.append((parts[cu], parts[cl].split(), parts[ci]))
    return rows


def read_text_file(path):
    texts = {}
    with open(path, encoding="utf-8") as f:
        header = [h.split(":")[0] for h in f.readline().rstrip("\r\n").split("\t")]
        if "item_id" not in header or len(header) < 2:
            raise PrepareError(f"{path} header must be 'item_id:token<TAB>text:token_seq', found {header}.")
        ci = header.index("item_id")
        for line in f:
            if not line.strip():
                continue
            parts = line.rstrip("\r\n").split("\t")
            token = parts[ci]
            text = " ".join(p for k, p in enumerate(parts) if k != ci).strip()
            texts[token] = " ".join(text.split())
    return texts


def rebuild_sequences(rows_by_split, src):
    per_user = {}
    for split in SPLITS:
        for user, history, target in rows_by_split[split]:
            per_user.setdefault(user, []).append((history, target))
    sequences = {}
    for user, rows in per_user.items():
        full = list(rows[0][0]) + [t for _, t in rows]
        start = len(rows[0][0])
        for j, (history, _) in enumerate(rows):
            pos = start + j
            expect = full[max(0, pos - len(history)):pos]
            if history != expect:
                raise PrepareError(
                    f"{src}: the rows of user {user} are not prefixes of one sequence (row {j + 1} "
                    "of that user). Fix: pass UniSRec's unshuffled train/valid/test files.")
        sequences[user] = full
    return sequences


def convert_unisrec(src, name, out="dataset", model=None, batch_size=64, text=True, force=False,
                    show_progress=True, log=print):
    if not os.path.isdir(src):
        raise PrepareError(f"source folder {src} does not exist. Fix: point --src at the folder "
                           f"holding {name}.train.inter, {name}.valid.inter, {name}.test.inter, {name}.text.")
    paths = {s: require_file(os.path.join(src, f"{name}.{s}.inter"), f"UniSRec {s} file",
                             f"put {name}.{s}.inter into {src}") for s in SPLITS}
    text_path = os.path.join(src, f"{name}.text")
    if text:
        require_file(text_path, "item text file", f"put {name}.text into {src}, or pass --no-text")
    out_dir = os.path.join(out, name)
    sources = [p for p in list(paths.values()) + [text_path] if os.path.isfile(p)]
    inputs = {"command": "unisrec", "name": name, "text": bool(text), "model": model,
              "files": {os.path.basename(p): file_digest(p) for p in sources}}
    if not force and manifest_matches(out_dir, {"inputs": inputs}, "unisrec"):
        log(f"{out_dir} is up to date (same sources and options); nothing to do. Use --force to redo.")
        return out_dir

    rows = {s: _read_rows(paths[s]) for s in SPLITS}
    sequences = rebuild_sequences(rows, src)
    os.makedirs(out_dir, exist_ok=True)
    n_inter = sum(len(s) for s in sequences.values())

    def write_inter(f):
        f.write("user_id:token\titem_id:token\ttimestamp:float\n")
        for user, seq in progress(sequences.items(), total=len(sequences), desc="write .inter",
                                  enabled=show_progress, unit="user"):
            f.write("".join(f"{user}\t{item}\t{pos}\n" for pos, item in enumerate(seq)))

    atomic_write(os.path.join(out_dir, f"{name}.inter"), write_inter)
    outputs = [f"{name}.inter"]
    report = {"users": len(sequences), "interactions": n_inter}
    if os.path.isfile(text_path):
        texts = read_text_file(text_path)
        atomic_write_text(os.path.join(out_dir, f"{name}.text"),
                          "item_id:token\ttext:token_seq\n"
                          + "".join(f"{t}\t{x}\n" for t, x in texts.items()))
        outputs.append(f"{name}.text")
        used = {item for seq in sequences.values() for item in seq}
        report["items"] = len(used)
        report["items_without_text"] = len(used - set(texts))
        settings = {"item_text_file": f"{name}.text"}
        features = None
        if text:
            written, features = write_text_features(out_dir, texts, model, batch_size, show_progress,
                                                    report, log)
            outputs += written
        outputs.append(update_dataset_yaml(out_dir, name, settings=settings, features=features))
    write_manifest(out_dir, {"inputs": inputs, "outputs": outputs, "report": report}, "unisrec")
    log(f"wrote {out_dir}: {n_inter} interactions, {len(sequences)} users; "
        f"outputs {', '.join(outputs)}")
    return out_dir


def write_text_features(out_dir, texts, model, batch_size, show_progress, report, log,
                        output="text_feat.npy", ids_name="text_item_ids.txt", integer_rows=True):
    """Encode ``texts`` (token -> str) and save them; returns the written file names and the
    ``multimodal_features`` entry declaring them."""
    tokens = list(texts)
    emb, description = encode_texts([texts[t] for t in tokens], model, batch_size, show_progress)
    report["text_encoder"] = description
    if integer_rows and all(t.isdigit() for t in tokens):
        rows = np.array([int(t) for t in tokens])
        matrix = np.zeros((rows.max() + 1, emb.shape[1]), dtype=np.float32)
        matrix[rows] = emb
        atomic_save_npy(os.path.join(out_dir, output), matrix)
        log(f"multimodal_features: {{text: {{file: {output}, dim: {emb.shape[1]}}}}}")
        return [output], dict([feature_entry(output, dim=emb.shape[1])])
    atomic_save_npy(os.path.join(out_dir, output), emb.astype(np.float32))
    atomic_write_text(os.path.join(out_dir, ids_name), "".join(f"{t}\n" for t in tokens))
    log(f"multimodal_features: {{text: {{file: {output}, ids: {ids_name}, dim: {emb.shape[1]}}}}}")
    return [output, ids_name], dict([feature_entry(output, ids_name, emb.shape[1])])
