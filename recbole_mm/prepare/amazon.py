"""Raw Amazon review data (2014, 2018 or 2023 release) -> recbole_mm dataset folder.

``python -m recbole_mm.prepare amazon --reviews FILE --meta FILE [--images DIR --image-model DIR]
--name NAME``

Input files are JSON lines, gzip-compressed (``.gz``, detected by content) or plain:

=========  ===================================================  =========================================
release    reviews: user, item, time (rating)                   meta: item, text fields, image URLs
=========  ===================================================  =========================================
2014       ``reviewerID, asin, unixReviewTime`` (s), overall     one *Python dict literal* per line (not
                                                                 JSON; read with ``ast.literal_eval``):
                                                                 ``asin, title, brand, categories``
                                                                 (list of lists), ``description``, ``imUrl``
2018       the same keys (plus ``verified``, ``vote``)           JSON: ``asin, title, brand, category,
                                                                 description`` (list), ``feature``,
                                                                 ``imageURL``, ``imageURLHighRes``
2023       ``user_id, parent_asin, timestamp`` (ms), rating      JSON: ``parent_asin, title, store,
                                                                 categories, features, description,
                                                                 images`` (list of dicts)
=========  ===================================================  =========================================

The release is detected from the keys of the first readable lines of both files (``--release``
asserts one; a contradiction between the files, or with ``--release``, stops the run). 2023
items are ``parent_asin`` (variants of one product are one item), as the 2023 release advises.

Steps, in order (each counted in the manifest and the printed table):

1. Read the reviews line by line (memory: a code per user and item plus 20 bytes per review).
   A line that is not a JSON object (or Python dict literal), or that lacks the user, the item
   or a numeric time, is skipped and counted (first line numbers kept as examples). The run
   stops when no review is readable, or when unreadable lines outnumber readable ones (the file
   is then not a review file).
2. ``--require-text``: drop reviews of items whose text fields are all empty or that have no
   meta line (UniSRec's preprocessing keeps only items with text).
3. Deduplicate: one interaction per (user, item), the earliest (ties: the first in the file).
4. k-core filter (``--k-core 5``, or ``--user-core`` / ``--item-core``): drop users and items
   with fewer interactions, repeated until nothing changes (a fixed point: every remaining user
   and item has at least k). ``0`` switches a side off.
5. ``--sample-users N``: keep N users drawn at random (``--seed``) after the filter, which is
   not applied again (the sampling of the ID-agnostic paper's Amazon set).

Outputs in ``<out>/NAME/``:

- ``NAME.inter``: ``user_id:token item_id:token rating:float timestamp:float``, grouped by user,
  time-ordered (ties in file order, which RecBole's stable sort keeps); timestamps in seconds;
- ``NAME.item``: ``item_id:token`` plus the text fields of the release (``title, brand,
  categories, description`` and, for 2018/2023, ``features``; tabs, newlines and HTML removed)
  and ``image_url:token`` (the largest image URL, for fetching images yourself: nothing is
  downloaded here). Items without a meta line have empty fields;
- ``text_feat.npy`` + ``text_item_ids.txt`` (``--text-fields`` joined, offline MiniLM or
  ``--text-model DIR``; skipped with ``--no-text``) and, with ``--images``,
  ``image_feat.npy`` + ``image_item_ids.txt``: items without text or image have no row and are
  marked missing by the dataset. Both steps are resumable and cached by content;
- ``NAME.yaml``: the dataset's config (``item_text_file``, ``item_text_fields``,
  ``multimodal_features``, ``item_image_dir``): ``--dataset=NAME`` runs with no other yaml;
- ``prepare_manifest.amazon.json``: sources (SHA-1), release, filter, statistics per stage,
  skipped lines. A rerun with the same inputs and options does nothing (``--force`` redoes it).
"""
import ast
import gzip
import html
import json
import os
import re
from array import array

import numpy as np

from .io import (PrepareError, atomic_write, file_digest, manifest_matches, progress, require_file,
                 update_dataset_yaml, write_manifest)

RELEASES = ("2014", "2018", "2023")
REVIEW_KEYS = {  # user, item, time, rating, seconds per time unit
    "2014": ("reviewerID", "asin", "unixReviewTime", "overall", 1.0),
    "2018": ("reviewerID", "asin", "unixReviewTime", "overall", 1.0),
    "2023": ("user_id", "parent_asin", "timestamp", "rating", 0.001),
}
META_ITEM_KEY = {"2014": "asin", "2018": "asin", "2023": "parent_asin"}
TEXT_KEYS = {  # our field name -> the release's meta key
    "2014": {"title": "title", "brand": "brand", "categories": "categories", "description": "description"},
    "2018": {"title": "title", "brand": "brand", "categories": "category", "description": "description",
             "features": "feature"},
    "2023": {"title": "title", "brand": "store", "categories": "categories", "description": "description",
             "features": "features"},
}
DEFAULT_TEXT_FIELDS = ("title", "brand", "categories", "description")
EXAMPLES = 10
_TAG = re.compile(r"<[^>]+>")
_SPACE = re.compile(r"\s+")


# ----------------------------------------------------------------------------- reading lines
def open_lines(path):
    """Text lines of a gzip (detected by its magic bytes) or plain UTF-8 file."""
    with open(path, "rb") as f:
        magic = f.read(2)
    if magic == b"\x1f\x8b":
        return gzip.open(path, "rt", encoding="utf-8", errors="replace")
    return open(path, encoding="utf-8", errors="replace")


def parse_record(line):
    """A dict from one JSON line, else from one Python dict literal (2014 meta); None if neither.
    ``ast.literal_eval`` evaluates literals only, never code."""
    line = line.strip()
    if not line:
        return None
    try:
        record = json.loads(line)
    except ValueError:
        try:
            record = ast.literal_eval(line)
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            return None
    return record if isinstance(record, dict) else None


def _stream(path, what, show_progress):
    """(line number, text) over the file, with a progress bar in bytes of the file on disk."""
    bar = progress(total=os.path.getsize(path), desc=f"read {what}", enabled=show_progress, unit="B")
    try:
        with open_lines(path) as lines:
            on_disk = getattr(lines.buffer, "fileobj", lines.buffer)  # gzip: the compressed file
            done = 0
            for number, line in enumerate(lines, start=1):
                if number % 8192 == 0:
                    position = on_disk.tell()
                    bar.update(position - done)
                    done = position
                yield number, line
    except (OSError, EOFError, UnicodeError) as err:
        raise PrepareError(f"cannot read {path} ({err}). Fix: pass the downloaded file as it is "
                           "(.json, .jsonl or their .gz).") from None
    finally:
        bar.close()


# ----------------------------------------------------------------------------- release detection
def review_release(record):
    """The releases a review line is consistent with."""
    if "user_id" in record or "parent_asin" in record:
        return {"2023"}
    if "reviewerID" in record:
        if "helpful" in record:
            return {"2014"}
        if {"verified", "vote", "style"} & set(record):
            return {"2018"}
        return {"2014", "2018"}
    return set()


def meta_release(record, python_literal):
    """The releases a meta line is consistent with (2014 meta lines are Python literals)."""
    keys = set(record)
    if "parent_asin" in keys or "main_category" in keys:
        return {"2023"}
    if python_literal or {"imUrl", "salesRank", "related", "categories"} & keys:
        return {"2014"}
    if {"category", "imageURL", "imageURLHighRes", "feature", "main_cat", "also_buy", "also_view"} & keys:
        return {"2018"}
    return {"2014", "2018"} if "asin" in keys else set()


def _first_records(path, n=5):
    """Up to ``n`` (record, is a Python literal) pairs from the first 1,000 lines."""
    found = []
    with open_lines(path) as lines:
        for number, line in enumerate(lines, start=1):
            try:
                record = json.loads(line)
                literal = False
            except ValueError:
                record, literal = parse_record(line), True
            if isinstance(record, dict):
                found.append((record, literal))
                if len(found) == n:
                    break
            if number >= 1000:
                break
    return found


def _releases_of(path, classify, fix):
    """The releases every one of the first readable lines of ``path`` is consistent with."""
    records = _first_records(path)
    if not records:
        raise PrepareError(f"no line among the first 1,000 of {path} is a JSON object or Python dict. Fix: {fix}")
    found = set(RELEASES)
    for record, literal in records:
        found &= classify(record, literal) or set(RELEASES)
    return found


def detect_release(reviews, meta, asked=None):
    """'2014', '2018' or '2023' from the first readable lines of both files; PrepareError when
    the files contradict each other or ``asked``."""
    from_reviews = _releases_of(reviews, lambda record, _: review_release(record),
                                "--reviews takes an Amazon review file (.json/.jsonl, optionally .gz).")
    from_meta = _releases_of(meta, meta_release, "--meta takes the Amazon metadata file of the same "
                             "category and release.")
    both = from_reviews & from_meta
    if not both:
        raise PrepareError(f"{reviews} looks like the {'/'.join(sorted(from_reviews))} release but {meta} like "
                           f"{'/'.join(sorted(from_meta))}. Fix: pass the reviews and meta files of one release.")
    if asked and asked != "auto":
        if asked not in both:
            raise PrepareError(f"--release {asked}, but the files look like the {'/'.join(sorted(both))} release. "
                               "Fix: drop --release (detected from the files) or pass the right files.")
        return asked
    if len(both) > 1:
        raise PrepareError(f"cannot tell the release of {reviews} and {meta} apart ({'/'.join(sorted(both))}). "
                           "Fix: pass --release.")
    return both.pop()


# ----------------------------------------------------------------------------- reviews
class Skipped:
    """Counts of skipped lines by reason, with the first line numbers of each."""

    def __init__(self):
        self.counts, self.examples = {}, {}

    def add(self, reason, line_number):
        self.counts[reason] = self.counts.get(reason, 0) + 1
        examples = self.examples.setdefault(reason, [])
        if len(examples) < EXAMPLES:
            examples.append(line_number)

    @property
    def total(self):
        return sum(self.counts.values())

    def report(self):
        return {reason: {"lines": n, "first_line_numbers": self.examples[reason]}
                for reason, n in sorted(self.counts.items())}

    def summary(self):
        return "; ".join(f"{n} {reason} (e.g. line {', '.join(map(str, self.examples[reason][:3]))})"
                         for reason, n in sorted(self.counts.items()))


def read_reviews(path, release, show_progress=True):
    """Stream the review file into compact arrays: user codes, item codes, times (s), ratings."""
    user_key, item_key, time_key, rating_key, scale = REVIEW_KEYS[release]
    users, items = {}, {}
    user_codes, item_codes, times, ratings = array("i"), array("i"), array("d"), array("f")
    skipped = Skipped()
    lines = 0
    for number, line in _stream(path, "reviews", show_progress):
        if not line.strip():
            continue
        lines += 1
        record = parse_record(line)
        if record is None:
            skipped.add("unreadable lines (not a JSON object)", number)
            continue
        user, item, time = record.get(user_key), record.get(item_key), record.get(time_key)
        missing = [k for k, v in ((user_key, user), (item_key, item), (time_key, time)) if v in (None, "")]
        if missing:
            skipped.add(f"lines without {missing[0]}", number)
            continue
        try:
            time = float(time) * scale
        except (TypeError, ValueError):
            skipped.add(f"lines with a non-numeric {time_key}", number)
            continue
        try:
            rating = float(record.get(rating_key))
        except (TypeError, ValueError):
            rating = float("nan")
        user_codes.append(users.setdefault(str(user), len(users)))
        item_codes.append(items.setdefault(str(item), len(items)))
        times.append(time)
        ratings.append(rating)
    if not user_codes:
        raise PrepareError(f"no usable review in {path} ({lines} lines: {skipped.summary() or 'empty'}). "
                           f"Fix: a {release} review file has {user_key}, {item_key} and {time_key} on every line.")
    if skipped.total > len(user_codes):
        raise PrepareError(f"{skipped.total} of {lines} lines of {path} are unusable ({skipped.summary()}); "
                           "this is not an Amazon review file of the detected release. Fix: check --reviews.")
    return {"user_tokens": np.array(list(users), dtype=object), "item_tokens": np.array(list(items), dtype=object),
            "user": np.frombuffer(user_codes, dtype=np.int32).astype(np.int64),
            "item": np.frombuffer(item_codes, dtype=np.int32).astype(np.int64),
            "time": np.frombuffer(times, dtype=np.float64).copy(),
            "rating": np.frombuffer(ratings, dtype=np.float32).copy(),
            "lines": lines, "skipped": skipped}


def statistics(users, items):
    """users, items, interactions, density and mean sequence length of a set of interactions."""
    n_users, n_items, n = len(np.unique(users)), len(np.unique(items)), len(users)
    return {"users": n_users, "items": n_items, "interactions": n,
            "density": n / (n_users * n_items) if n_users and n_items else 0.0,
            "avg_length": n / n_users if n_users else 0.0}


def deduplicate(users, items, times, n_items):
    """Row indices to keep: per (user, item), the earliest row (ties: the first in the file)."""
    order = np.lexsort((np.arange(len(users)), times))
    pairs = users[order] * np.int64(n_items) + items[order]
    _, first = np.unique(pairs, return_index=True)
    return np.sort(order[first])


def k_core(users, items, user_k, item_k):
    """Boolean mask of rows surviving the iterated k-core filter, and the number of passes."""
    keep = np.ones(len(users), dtype=bool)
    n_users, n_items = int(users.max()) + 1, int(items.max()) + 1
    passes = 0
    while True:
        passes += 1
        user_count = np.bincount(users[keep], minlength=n_users)
        item_count = np.bincount(items[keep], minlength=n_items)
        drop = keep & ((user_count[users] < user_k) | (item_count[items] < item_k))
        if not drop.any():
            return keep, passes
        keep &= ~drop


# ----------------------------------------------------------------------------- meta
def clean_text(value):
    """One line of plain text from a meta value (str, list, or list of lists)."""
    if value is None:
        return ""
    if isinstance(value, (list, tuple)):
        parts = []
        for v in value:
            for piece in (v if isinstance(v, (list, tuple)) else [v]):
                text = clean_text(piece)
                if text and text not in parts:
                    parts.append(text)
        return ", ".join(parts)
    if isinstance(value, dict):
        return ""
    text = html.unescape(_TAG.sub(" ", str(value)))
    return _SPACE.sub(" ", text).strip()


def image_url(record, release):
    if release == "2014":
        return str(record.get("imUrl") or "")
    if release == "2018":
        urls = record.get("imageURLHighRes") or record.get("imageURL") or []
        return str(urls[0]) if isinstance(urls, list) and urls else ""
    for image in record.get("images") or []:
        if isinstance(image, dict):
            for key in ("hi_res", "large", "thumb"):
                if image.get(key):
                    return str(image[key])
    return ""


def read_meta(path, release, wanted, text_fields=None, show_progress=True):
    """``{item: {field: text, ..., 'image_url': url}}`` for the items in ``wanted``.

    Lines of other items are skipped before parsing (a cheap look at their item key), so huge
    meta files cost reading time only. With ``text_fields`` only the items whose joined fields
    are non-empty are returned, as ``{item: None}`` (the first pass of ``--require-text``)."""
    key = META_ITEM_KEY[release]
    probe = re.compile(r"""["']%s["']\s*:\s*["']([^"']+)["']""" % key)
    fields = TEXT_KEYS[release]
    found, skipped, duplicates = {}, Skipped(), 0
    for number, line in _stream(path, "meta", show_progress):
        match = probe.search(line)
        if match is not None and match.group(1) not in wanted:
            continue
        record = parse_record(line)
        if record is None:
            if line.strip():
                skipped.add("unreadable lines (neither JSON nor a Python dict)", number)
            continue
        item = record.get(key)
        if item is None:
            skipped.add(f"lines without {key}", number)
            continue
        item = str(item)
        if item not in wanted:
            continue
        if item in found:
            duplicates += 1
            continue
        if text_fields is not None:
            if any(clean_text(record.get(fields[f])) for f in text_fields):
                found[item] = None
            continue
        entry = {name: clean_text(record.get(meta_key)) for name, meta_key in fields.items()}
        entry["image_url"] = image_url(record, release)
        found[item] = entry
    return found, skipped, duplicates


# ----------------------------------------------------------------------------- writing
def _format_time(t):
    return format(t, ".15g")


def write_inter(path, data, rows, show_progress):
    """Rows grouped by user token, time-ordered within a user (ties in file order)."""
    user_tokens, item_tokens = data["user_tokens"], data["item_tokens"]
    present = np.unique(data["user"][rows])
    rank_of = np.zeros(len(user_tokens), dtype=np.int64)
    rank_of[present[np.argsort(user_tokens[present].astype(str))]] = np.arange(len(present))
    order = rows[np.lexsort((rows, data["time"][rows], rank_of[data["user"][rows]]))]

    def write(f):
        f.write("user_id:token\titem_id:token\trating:float\ttimestamp:float\n")
        step = 65536
        for start in progress(range(0, len(order), step), desc="write .inter", enabled=show_progress,
                              unit="block"):
            block = order[start:start + step]
            f.write("".join(
                f"{user_tokens[u]}\t{item_tokens[i]}\t{'' if r != r else format(r, 'g')}\t{_format_time(t)}\n"
                for u, i, r, t in zip(data["user"][block].tolist(), data["item"][block].tolist(),
                                      data["rating"][block].tolist(), data["time"][block].tolist())))

    atomic_write(path, write)


def write_item(path, items, meta, release):
    fields = list(TEXT_KEYS[release])

    def write(f):
        f.write("\t".join(["item_id:token"] + [f"{name}:token_seq" for name in fields] + ["image_url:token"]) + "\n")
        for item in items:
            entry = meta.get(item) or {}
            values = [entry.get(name, "") for name in fields] + [entry.get("image_url", "")]
            f.write("\t".join([item] + [v.replace("\t", " ") for v in values]) + "\n")

    atomic_write(path, write)


def format_table(stages):
    header = f"{'stage':<26}{'users':>11}{'items':>11}{'interactions':>14}{'density':>11}{'avg len':>9}"
    lines = [header, "-" * len(header)]
    for stage, s in stages:
        lines.append(f"{stage:<26}{s['users']:>11,}{s['items']:>11,}{s['interactions']:>14,}"
                     f"{s['density']:>11.6f}{s['avg_length']:>9.2f}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- the command
def parse_text_fields(text_fields, release):
    names = [f.strip() for f in (text_fields or ",".join(DEFAULT_TEXT_FIELDS)).split(",") if f.strip()]
    unknown = [f for f in names if f not in TEXT_KEYS[release]]
    if unknown or not names:
        raise PrepareError(f"--text-fields {unknown or names} not available in the {release} release; "
                           f"choose from {', '.join(TEXT_KEYS[release])}.")
    return names


def convert_amazon(reviews, meta, name, out="dataset", images=None, image_model=None, release="auto",
                   k_core_min=5, user_core=None, item_core=None, text_fields=None, require_text=False,
                   sample_users=None, seed=2020, text=True, text_model=None, batch_size=64,
                   image_batch_size=32, force=False, show_progress=True, log=print):
    require_file(reviews, "review file", "pass the Amazon reviews file (.json/.jsonl, optionally .gz) to --reviews")
    require_file(meta, "meta file", "pass the Amazon metadata file of the same category to --meta")
    if images is not None:
        if not os.path.isdir(images):
            raise PrepareError(f"image folder {images} does not exist. Fix: --images must hold <asin>.jpg/.png files.")
        if image_model is None:
            raise PrepareError("--images needs --image-model DIR: a local transformers vision model folder "
                               "(CLIP, ViT, ResNet; saved with save_pretrained). Nothing is downloaded.")
    user_k = k_core_min if user_core is None else user_core
    item_k = k_core_min if item_core is None else item_core
    for flag, value in (("--user-core", user_k), ("--item-core", item_k)):
        if value < 0:
            raise PrepareError(f"{flag} must be >= 0 (0 = no filter), got {value}.")
    if sample_users is not None and sample_users <= 0:
        raise PrepareError(f"--sample-users must be a positive number of users, got {sample_users}.")
    release = detect_release(reviews, meta, release)
    fields = parse_text_fields(text_fields, release)
    out_dir = os.path.join(out, name)
    inputs = {"command": "amazon", "name": name, "release": release,
              "files": {"reviews": [os.path.basename(reviews), file_digest(reviews)],
                        "meta": [os.path.basename(meta), file_digest(meta)]},
              "filter": {"user_core": user_k, "item_core": item_k, "require_text": bool(require_text),
                         "sample_users": sample_users, "seed": seed if sample_users else None,
                         "deduplicate": "earliest per (user, item)"},
              "text_fields": fields}
    if not force and manifest_matches(out_dir, {"inputs": inputs}, "amazon"):
        log(f"{out_dir}: interactions up to date (same sources and options).")
    else:
        _convert(reviews, meta, name, out_dir, release, fields, inputs, user_k, item_k, require_text,
                 sample_users, seed, show_progress, log)
    settings = {"load_col": {"inter": ["user_id", "item_id", "timestamp"]},
                "item_text_file": f"{name}.item", "item_text_fields": fields}
    if images is not None:
        settings["item_image_dir"] = os.path.abspath(images)
    update_dataset_yaml(out_dir, name, settings=settings)
    if text:
        from .text import prepare_text

        prepare_text(name, ",".join(fields), out, model=text_model, batch_size=batch_size, force=force,
                     show_progress=show_progress, log=log)
    if images is not None:
        from .images import prepare_images

        prepare_images(name, images, image_model, out, batch_size=image_batch_size, force=force,
                       show_progress=show_progress, log=log)
    log(f"run it: python run_recbole_mm.py --model={'MuSTRec' if text or images else 'SASRec'} --dataset={name}"
        + ("" if os.path.normpath(out) == "dataset" else f" --data_path={out}"))
    return out_dir


def _convert(reviews, meta, name, out_dir, release, fields, inputs, user_k, item_k, require_text,
             sample_users, seed, show_progress, log):
    data = read_reviews(reviews, release, show_progress)
    stages = [("reviews read", statistics(data["user"], data["item"]))]
    rows = np.arange(len(data["user"]))
    report = {"release": release, "review_lines": data["lines"], "skipped_review_lines": data["skipped"].report()}
    if require_text:
        wanted = set(data["item_tokens"].tolist())
        with_text, _, _ = read_meta(meta, release, wanted, text_fields=fields, show_progress=show_progress)
        has_text = np.array([t in with_text for t in data["item_tokens"].tolist()], dtype=bool)
        rows = rows[has_text[data["item"][rows]]]
        report["items_dropped_without_text"] = int((~has_text).sum())
        stages.append(("items with text", statistics(data["user"][rows], data["item"][rows])))
    kept = deduplicate(data["user"][rows], data["item"][rows], data["time"][rows], len(data["item_tokens"]))
    report["duplicates_removed"] = int(len(rows) - len(kept))
    rows = rows[kept]
    stages.append(("deduplicated", statistics(data["user"][rows], data["item"][rows])))
    mask, passes = k_core(data["user"][rows], data["item"][rows], user_k, item_k)
    rows = rows[mask]
    if len(rows) == 0:
        raise PrepareError(f"no interaction survives the {user_k}/{item_k}-core filter (users/items). "
                           "Fix: lower --k-core (or --user-core / --item-core), or use a larger review file.")
    report["k_core_passes"] = passes
    stages.append((f"{user_k}/{item_k}-core (users/items)", statistics(data["user"][rows], data["item"][rows])))
    if sample_users:
        present = np.unique(data["user"][rows])
        if sample_users < len(present):
            by_token = present[np.argsort(data["user_tokens"][present].astype(str))]
            chosen = np.random.default_rng(seed).choice(by_token, size=sample_users, replace=False)
            rows = rows[np.isin(data["user"][rows], chosen)]
        stages.append((f"{sample_users} users sampled", statistics(data["user"][rows], data["item"][rows])))
    items = sorted(set(data["item_tokens"][np.unique(data["item"][rows])].tolist()))
    item_meta, meta_skipped, meta_duplicates = read_meta(meta, release, set(items), show_progress=show_progress)
    os.makedirs(out_dir, exist_ok=True)
    write_inter(os.path.join(out_dir, f"{name}.inter"), data, rows, show_progress)
    write_item(os.path.join(out_dir, f"{name}.item"), items, item_meta, release)
    no_text = [i for i in items if not any((item_meta.get(i) or {}).get(f) for f in fields)]
    report.update({
        "statistics": {stage: s for stage, s in stages},
        "final": stages[-1][1],
        "items_without_meta": len([i for i in items if i not in item_meta]),
        "items_without_text": len(no_text), "items_without_text_examples": no_text[:EXAMPLES],
        "items_without_image_url": len([i for i in items if not (item_meta.get(i) or {}).get("image_url")]),
        "skipped_meta_lines": meta_skipped.report(), "duplicate_meta_lines": meta_duplicates,
    })
    outputs = [f"{name}.inter", f"{name}.item"]
    write_manifest(out_dir, {"inputs": inputs, "outputs": outputs, "report": report}, "amazon")
    log(f"\nAmazon {release} -> {out_dir}: {user_k}-core users, {item_k}-core items ({passes} passes), "
        "one interaction per (user, item)")
    log(format_table(stages))
    if data["skipped"].total:
        log(f"skipped review lines: {data['skipped'].summary()}")
    if meta_skipped.total:
        log(f"skipped meta lines: {meta_skipped.summary()}")
    log(f"items without a meta line: {report['items_without_meta']}; without text in {fields}: "
        f"{len(no_text)} (marked missing); details in {os.path.join(out_dir, 'prepare_manifest.amazon.json')}\n")
