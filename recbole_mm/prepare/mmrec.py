"""MMRec format -> recbole_mm dataset folder.

Input (``--src DIR``): ``NAME.inter`` (tab-separated, header ``userID itemID rating timestamp
x_label``; ``rating`` optional, ``x_label`` 0 train / 1 valid / 2 test needed only for
``--split x_label``), ``image_feat.npy`` and/or ``text_feat.npy`` (float ``[n_items, d]``,
row i = item i).

Output (``<out>/<NAME>/``, default ``dataset/NAME/``):

- ``NAME.inter``: RecBole atomic file ``user_id:token item_id:token rating:float
  timestamp:float``, rows grouped by user in the order described below;
- ``image_feat.npy`` / ``text_feat.npy``: float32 copies, row r = item token ``str(r)`` (so
  the dataset yaml declares them without an ``ids`` file);
- ``NAME.yaml``: the dataset's config (``multimodal_features``), read by recbole_mm for
  ``--dataset=NAME``;
- ``prepare_manifest.mmrec.json``: source digests, options and a split report. A rerun with
  the same inputs and options does nothing (``--force`` redoes it).

Split protocol (the decision, documented here once)
    recbole_mm evaluates with RecBole's per-user leave-one-out
    (``eval_args: {split: {LS: valid_and_test}, order: TO}``): after a *stable* sort by
    (user, timestamp) a user's last row is test, the one before is validation. RecBole's sort
    is stable, so the row order of ``NAME.inter`` breaks timestamp ties. We write each user's
    rows so that this sort reproduces the intended order exactly:

    ``--split loo`` (default): order = (timestamp, original row order in the source file).
        ``x_label`` is not used; the manifest counts users whose x_label valid/test rows are not
        their last two rows in this order (MMRec files shuffle rows within a user and Amazon
        timestamps are day-resolution, see docs/models/MuSTRec.md D6).
    ``--split x_label``: reproduce MMRec's own split. Order = train rows (x_label 0) by
        (timestamp, row), then valid rows (1), then test rows (2). Where that order is not
        already time-sorted the timestamps are raised to the running maximum (the minimal
        change that makes leave-one-out take the x_label rows); such users are counted and
        listed in the manifest. Users without exactly one valid and one test row cannot be
        reproduced by leave-one-out (their last two rows become valid/test): they are
        reported too.
"""
import os

import numpy as np

from .io import (PrepareError, atomic_write, atomic_save_npy, feature_entry, file_digest,
                 load_feature_matrix, manifest_matches, progress, require_file, update_dataset_yaml,
                 write_manifest)

FEATURE_FILES = ("image_feat.npy", "text_feat.npy")
REPORT_LIMIT = 50


def read_mmrec_inter(path, need_x_label):
    import pandas as pd

    with open(path, encoding="utf-8") as f:
        first = f.readline()
    sep = "\t" if "\t" in first else ("," if "," in first else r"\s+")
    try:
        frame = pd.read_csv(path, sep=sep, dtype=str, engine="python" if sep == r"\s+" else "c",
                            keep_default_na=False)
    except Exception as err:  # noqa: BLE001
        raise PrepareError(f"cannot parse {path} ({err}). Fix: tab-separated with a header line.") from None
    frame.columns = [c.strip() for c in frame.columns]
    required = ["userID", "itemID", "timestamp"] + (["x_label"] if need_x_label else [])
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise PrepareError(
            f"{path} lacks column(s) {missing}; found {list(frame.columns)}. Fix: MMRec header is "
            "'userID itemID rating timestamp x_label' (x_label only needed for --split x_label).")
    if len(frame) == 0:
        raise PrepareError(f"{path} has a header but no interactions.")
    out = {"user": frame["userID"].str.strip().to_numpy()}
    for col, key, kind in (("itemID", "item", int), ("timestamp", "timestamp", float),
                           ("rating", "rating", float), ("x_label", "x_label", int)):
        if col not in frame.columns:
            continue
        try:
            values = pd.to_numeric(frame[col].str.strip(), errors="raise")
        except (ValueError, TypeError):
            bad = frame[col][pd.to_numeric(frame[col], errors="coerce").isna()].iloc[0]
            raise PrepareError(f"{path}: column {col} has a non-numeric value {bad!r}. "
                               "Fix: numeric values only.") from None
        values = values.to_numpy()
        if kind is int:
            if not np.all(np.equal(np.mod(values, 1), 0)):
                raise PrepareError(f"{path}: column {col} must hold integers.")
            values = values.astype(np.int64)
        out[key] = values
    if out["item"].min() < 0:
        raise PrepareError(f"{path}: itemID must be >= 0 (row i of the feature files is item i).")
    if "x_label" in out and not np.isin(out["x_label"], (0, 1, 2)).all():
        raise PrepareError(f"{path}: x_label must be 0 (train), 1 (valid) or 2 (test).")
    return out


def order_rows(data, split):
    """Row order and (possibly adjusted) timestamps for the chosen split; plus a report."""
    users = data["user"]
    first_seen = {}
    for u in users:
        first_seen.setdefault(u, len(first_seen))
    user_rank = np.array([first_seen[u] for u in users])
    row = np.arange(len(users))
    ts = data["timestamp"].astype(np.float64)
    x_label = data.get("x_label")
    if split == "loo":
        order = np.lexsort((row, ts, user_rank))
        new_ts = ts[order]
    else:
        order = np.lexsort((row, ts, x_label, user_rank))
        new_ts = ts[order].copy()
    ranks = user_rank[order]
    starts = np.r_[0, np.flatnonzero(ranks[1:] != ranks[:-1]) + 1]
    ends = np.r_[starts[1:], len(order)]
    report = {"users": int(len(starts)), "interactions": int(len(order))}
    if x_label is not None:
        labels = x_label[order]
        not_last_two, adjusted, not_one_each = [], [], []
        for s, e in zip(starts, ends):
            lab = labels[s:e]
            uid = str(users[order[s]])
            if (lab == 1).sum() != 1 or (lab == 2).sum() != 1:
                not_one_each.append(uid)
            if not (e - s >= 2 and lab[-2] == 1 and lab[-1] == 2 and (lab[:-2] == 0).all()):
                not_last_two.append(uid)
            if split == "x_label":
                block = np.maximum.accumulate(new_ts[s:e])
                if not np.array_equal(block, new_ts[s:e]):
                    adjusted.append(uid)
                new_ts[s:e] = block
        if split == "loo":
            report["users_whose_x_label_is_not_their_last_two_rows"] = len(not_last_two)
            report["examples"] = not_last_two[:REPORT_LIMIT]
        else:
            report["users_with_timestamps_raised"] = len(adjusted)
            report["users_timestamps_raised_examples"] = adjusted[:REPORT_LIMIT]
            report["users_without_exactly_one_valid_and_one_test"] = len(not_one_each)
            report["users_without_one_valid_one_test_examples"] = not_one_each[:REPORT_LIMIT]
    return order, new_ts, report


def _format_number(values):
    if np.all(np.equal(np.mod(values, 1), 0)) and np.abs(values).max(initial=0) < 2**53:
        return values.astype(np.int64).astype(str)
    return np.char.mod("%.17g", values)


def write_inter(path, data, order, timestamps, show_progress=True):
    columns = [("user_id:token", data["user"][order].astype(str)),
               ("item_id:token", data["item"][order].astype(str))]
    if "rating" in data:
        columns.append(("rating:float", _format_number(data["rating"][order])))
    columns.append(("timestamp:float", _format_number(timestamps)))
    header = "\t".join(name for name, _ in columns) + "\n"
    n = len(order)

    def writer(f):
        f.write(header)
        step = 200_000
        for s in progress(range(0, n, step), desc="write .inter", enabled=show_progress,
                          unit="block"):
            e = min(n, s + step)
            lines = ["\t".join(col[i] for _, col in columns) for i in range(s, e)]
            f.write("\n".join(lines) + "\n")

    atomic_write(path, writer)


def convert_mmrec(src, name, out="dataset", split="loo", force=False, show_progress=True,
                  log=print):
    """Convert ``src`` (MMRec layout) into ``<out>/<name>/``; returns the output folder."""
    if split not in ("loo", "x_label"):
        raise PrepareError(f"--split must be 'loo' or 'x_label', got {split!r}")
    if not os.path.isdir(src):
        raise PrepareError(f"source folder {src} does not exist. Fix: point --src at the folder "
                           f"holding {name}.inter and the feature .npy files.")
    inter_path = require_file(os.path.join(src, f"{name}.inter"), "MMRec interaction file",
                              f"put {name}.inter (userID itemID rating timestamp x_label) into {src}")
    features = [f for f in FEATURE_FILES if os.path.isfile(os.path.join(src, f))]
    if not features:
        raise PrepareError(f"no feature file in {src}. Fix: put image_feat.npy and/or "
                           "text_feat.npy (row i = item i) next to the .inter file.")
    out_dir = os.path.join(out, name)
    inputs = {"command": "mmrec", "split": split, "name": name,
              "files": {f: file_digest(os.path.join(src, f)) for f in [f"{name}.inter"] + features}}
    if not force and manifest_matches(out_dir, {"inputs": inputs}, "mmrec"):
        log(f"{out_dir} is up to date (same sources and options); nothing to do. Use --force to redo.")
        return out_dir
    os.makedirs(out_dir, exist_ok=True)

    data = read_mmrec_inter(inter_path, need_x_label=(split == "x_label"))
    n_items = int(data["item"].max()) + 1
    order, timestamps, report = order_rows(data, split)
    for fname in features:  # validate every feature file before writing anything
        load_feature_matrix(os.path.join(src, fname), min_rows=n_items, name=fname[:-9])
    write_inter(os.path.join(out_dir, f"{name}.inter"), data, order, timestamps, show_progress)
    used = np.unique(data["item"])
    for fname in progress(features, desc="features", enabled=show_progress, unit="file"):
        matrix = load_feature_matrix(os.path.join(src, fname), min_rows=n_items)
        zero = int((np.abs(matrix[used]).sum(1) == 0).sum())
        report[f"{fname}: shape"] = list(matrix.shape)
        report[f"{fname}: used items with a zero row (treated as missing)"] = zero
        atomic_save_npy(os.path.join(out_dir, fname), matrix)
        del matrix
    declared = dict(feature_entry(f) for f in features)  # row r = item token r: no ids file
    outputs = [f"{name}.inter"] + features + [update_dataset_yaml(out_dir, name, features=declared)]
    write_manifest(out_dir, {"inputs": inputs, "outputs": outputs, "report": report}, "mmrec")
    log(f"declared in {os.path.join(out_dir, outputs[-1])}: multimodal_features: {{"
        + ", ".join(f"{f[:-9]}: {{file: {f}}}" for f in features) + "}")
    log(f"wrote {out_dir}: {report['interactions']} interactions, {report['users']} users, "
        f"{len(used)} items; features {', '.join(features)}; split '{split}'")
    for key, value in report.items():
        if key.startswith("users_") and not key.endswith("examples") and value:
            log(f"  note: {key.replace('_', ' ')}: {value} (see prepare_manifest.mmrec.json)")
    return out_dir
