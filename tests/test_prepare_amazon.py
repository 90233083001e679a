"""``python -m recbole_mm.prepare amazon`` on raw files of the 2014, 2018 and 2023 releases written
here (never downloaded): release detection, bad lines, duplicates, the iterated k-core, the
written dataset compared with a slow reference, resumable features, and 1-epoch training by name."""
import gzip
import json
import os
import subprocess
import sys
from collections import Counter

import numpy as np
import pytest

from conftest import REPO_ROOT, tiny_run_config, tiny_text_model, tiny_vision_model
from recbole_mm.prepare.__main__ import main as prepare_main
from recbole_mm.prepare.amazon import convert_amazon, k_core
from recbole_mm.prepare.io import PrepareError

QUIET = {"show_progress": False, "log": lambda *a: None}
WORDS = ["glue", "gel", "super", "gloves", "nitrile", "magnet", "red", "blue"]
DAY = 86400
BASE_TIME = 1_400_000_000


# ----------------------------------------------------------------------------- raw fixtures
def make_reviews(n_users=36, n_items=30, seed=0):
    """(user, item, seconds, rating) in file order, with the cases the filter must handle:
    a duplicate review (later, and an exact repeat), a user below 5 reviews (LOW), an item with
    two reviews (RARE) whose removal takes user EDGE (5 reviews) below 5 on the second pass."""
    rng = np.random.default_rng(seed)
    items = [f"B{i:04d}" for i in range(n_items)]
    reviews = []
    for u in range(n_users):
        chosen = rng.choice(n_items, size=int(rng.integers(6, 9)), replace=False)
        for t, i in enumerate(chosen):
            day = t if t != 3 else 2  # a same-day tie in every history
            reviews.append((f"U{u:03d}", items[i], BASE_TIME + day * DAY, float(rng.integers(1, 6))))
    reviews.append(("U000", reviews[0][1], BASE_TIME + 40 * DAY, 1.0))  # reviewed again later
    reviews.append(reviews[1])  # the same line twice
    reviews += [("LOW", items[k], BASE_TIME + k * DAY, 5.0) for k in range(3)]
    reviews += [("EDGE", it, BASE_TIME + k * DAY, 4.0) for k, it in enumerate(["RARE"] + items[:4])]
    reviews.append(("U001", "RARE", BASE_TIME + 50 * DAY, 3.0))
    return reviews, items + ["RARE"]


def reference_inter(reviews, k=5):
    """Slow reference: earliest review per (user, item), iterated k-core, grouped by user,
    ordered by (time, file position)."""
    earliest = {}
    for n, (u, i, t, _) in enumerate(reviews):
        if (u, i) not in earliest or (t, n) < earliest[(u, i)][:2]:
            earliest[(u, i)] = (t, n)
    rows = [(u, i, t, n) for (u, i), (t, n) in earliest.items()]
    while True:
        users, items = Counter(r[0] for r in rows), Counter(r[1] for r in rows)
        kept = [r for r in rows if users[r[0]] >= k and items[r[1]] >= k]
        if len(kept) == len(rows):
            break
        rows = kept
    return [(u, i, float(t)) for u, i, t, _ in sorted(rows, key=lambda r: (r[0], r[2], r[3]))]


def meta_record(item, release, k):
    title = f"{WORDS[k % 8]} {WORDS[(k * 3) % 8]}"
    if release == "2014":
        return {"asin": item, "title": title, "brand": "Acme", "categories": [["Baby", "Toys"], ["Baby"]],
                "description": f"<p>{WORDS[k % 5]} &amp; more</p>", "imUrl": f"http://img/{item}.jpg",
                "salesRank": {"Baby": k}}
    if release == "2018":
        return {"asin": item, "title": title, "brand": "Acme", "category": ["Baby", "Toys"],
                "description": [f"{WORDS[k % 5]}", "more"], "feature": ["soft"], "main_cat": "Baby",
                "imageURL": [f"http://img/{item}_s.jpg"], "imageURLHighRes": [f"http://img/{item}.jpg"]}
    return {"parent_asin": item, "title": title, "store": "Acme", "main_category": "Baby",
            "categories": ["Baby", "Toys"], "features": ["soft"], "description": [f"{WORDS[k % 5]}"],
            "images": [{"thumb": f"http://img/{item}_t.jpg", "large": f"http://img/{item}.jpg"}]}


def review_record(user, item, seconds, rating, release):
    if release == "2014":
        return {"reviewerID": user, "asin": item, "reviewerName": "x", "helpful": [0, 0], "reviewText": "ok",
                "overall": rating, "summary": "ok", "unixReviewTime": seconds, "reviewTime": "01 1, 2014"}
    if release == "2018":
        return {"overall": rating, "verified": True, "reviewTime": "01 1, 2018", "reviewerID": user, "asin": item,
                "style": {"Size:": "M"}, "reviewText": "ok", "summary": "ok", "unixReviewTime": seconds}
    return {"rating": rating, "title": "ok", "text": "ok", "images": [], "asin": item + "-v", "parent_asin": item,
            "user_id": user, "timestamp": seconds * 1000, "helpful_vote": 0, "verified_purchase": True}


def write_raw(folder, release, gz=True):
    """Review and meta files of one release, with bad lines: one unreadable review line, one
    without the user, one with a text timestamp; one unreadable meta line; item B0029 has no meta."""
    os.makedirs(folder, exist_ok=True)
    reviews, items = make_reviews()
    user_key = "user_id" if release == "2023" else "reviewerID"
    time_key = "timestamp" if release == "2023" else "unixReviewTime"
    lines = [json.dumps(review_record(*r, release)) for r in reviews]
    no_user = review_record("U999", items[0], BASE_TIME, 5.0, release)
    del no_user[user_key]
    bad_time = review_record("U998", items[0], BASE_TIME, 5.0, release)
    bad_time[time_key] = "yesterday"
    lines[5:5] = ['{"reviewerID": "U1", "asin": ', json.dumps(no_user), json.dumps(bad_time)]
    suffix = ".jsonl" if release == "2023" else ".json"
    review_path = os.path.join(folder, f"reviews_{release}{suffix}" + (".gz" if gz else ""))
    with (gzip.open(review_path, "wt") if gz else open(review_path, "w")) as f:
        f.write("\n".join(lines) + "\n")
    meta_lines = []
    for k, item in enumerate(items):
        if item == "B0029":
            continue
        record = meta_record(item, release, k)
        meta_lines.append(str(record) if release == "2014" else json.dumps(record))  # 2014: Python literal
    meta_lines.insert(3, "{'asin': 'B0003', 'title': ")
    meta_path = os.path.join(folder, f"meta_{release}{suffix}.gz")
    with gzip.open(meta_path, "wt") as f:
        f.write("\n".join(meta_lines) + "\n")
    return review_path, meta_path, reviews


def read_inter(path):
    with open(path) as f:
        header = f.readline().rstrip("\n").split("\t")
        return header, [line.rstrip("\n").split("\t") for line in f]


# ----------------------------------------------------------------------------- conversion
@pytest.mark.parametrize("release", ["2014", "2018", "2023"])
def test_each_release_converts_like_the_slow_reference(tmp_path, release):
    reviews_file, meta_file, reviews = write_raw(str(tmp_path / "raw"), release, gz=release != "2018")
    messages = []
    folder = convert_amazon(reviews_file, meta_file, "shop", str(tmp_path / "data"), text=False,
                            show_progress=False, log=messages.append)
    header, rows = read_inter(os.path.join(folder, "shop.inter"))
    assert header == ["user_id:token", "item_id:token", "rating:float", "timestamp:float"]
    assert [(u, i, float(t)) for u, i, _, t in rows] == reference_inter(reviews)
    assert not {"LOW", "EDGE"} & {r[0] for r in rows} and "RARE" not in {r[1] for r in rows}
    manifest = json.load(open(os.path.join(folder, "prepare_manifest.amazon.json")))
    report = manifest["report"]
    assert manifest["inputs"]["release"] == report["release"] == release
    skipped = {reason: v["lines"] for reason, v in report["skipped_review_lines"].items()}
    time_key = "timestamp" if release == "2023" else "unixReviewTime"
    user_key = "user_id" if release == "2023" else "reviewerID"
    assert skipped == {"unreadable lines (not a JSON object)": 1, f"lines without {user_key}": 1,
                       f"lines with a non-numeric {time_key}": 1}
    assert report["skipped_review_lines"]["unreadable lines (not a JSON object)"]["first_line_numbers"] == [6]
    assert report["duplicates_removed"] == 2 and report["k_core_passes"] == 3
    final = report["final"]
    assert final["interactions"] == len(rows) and final["users"] == len({r[0] for r in rows})
    assert final["density"] == pytest.approx(len(rows) / (final["users"] * final["items"]))
    assert any("5/5-core (users/items)" in m for m in messages)  # the printed table
    with open(os.path.join(folder, "shop.item")) as f:
        item_rows = {line.split("\t")[0]: line.rstrip("\n").split("\t") for line in f}
    assert item_rows["B0029"][1:] == [""] * (len(item_rows["item_id:token"]) - 1)  # no meta line
    title, brand, categories, description = item_rows["B0001"][1:5]
    assert (title, brand, categories) == ("gel gloves", "Acme", "Baby, Toys")
    assert "<" not in description and "&amp;" not in description
    assert item_rows["B0001"][-1] == "http://img/B0001.jpg"
    assert report["skipped_meta_lines"]["unreadable lines (neither JSON nor a Python dict)"]["lines"] == 1
    import yaml

    declared = yaml.safe_load(open(os.path.join(folder, "shop.yaml")))
    assert declared["item_text_file"] == "shop.item" and declared["item_text_fields"][0] == "title"


def test_k_core_reaches_a_fixed_point():
    users = np.array([0, 0, 1, 1, 1, 2, 2, 2])
    items = np.array([0, 1, 0, 1, 2, 0, 1, 2])
    keep, passes = k_core(users, items, 3, 2)  # user 0 (2 rows) goes, then item 2 still has 2
    assert keep.tolist() == [False, False, True, True, True, True, True, True] and passes == 2
    keep, passes = k_core(users, items, 3, 3)  # then items 0 and 1 fall to 2: everything goes
    assert not keep.any()


def test_rerun_is_a_no_op_and_options_are_recorded(tmp_path):
    reviews_file, meta_file, _ = write_raw(str(tmp_path / "raw"), "2014")
    messages = []
    out = str(tmp_path / "data")
    convert_amazon(reviews_file, meta_file, "shop", out, text=False, show_progress=False, log=messages.append)
    stamp = os.stat(tmp_path / "data" / "shop" / "shop.inter").st_mtime_ns
    convert_amazon(reviews_file, meta_file, "shop", out, text=False, show_progress=False, log=messages.append)
    assert any("up to date" in m for m in messages)
    assert os.stat(tmp_path / "data" / "shop" / "shop.inter").st_mtime_ns == stamp
    convert_amazon(reviews_file, meta_file, "shop", out, text=False, k_core_min=0, **QUIET)
    header, rows = read_inter(str(tmp_path / "data" / "shop" / "shop.inter"))
    assert "LOW" in {r[0] for r in rows} and "RARE" in {r[1] for r in rows}  # 0 = no filter
    manifest = json.load(open(tmp_path / "data" / "shop" / "prepare_manifest.amazon.json"))
    assert manifest["inputs"]["filter"]["user_core"] == 0


def test_require_text_and_user_sampling(tmp_path):
    reviews_file, meta_file, reviews = write_raw(str(tmp_path / "raw"), "2018")
    folder = convert_amazon(reviews_file, meta_file, "shop", str(tmp_path / "data"), text=False,
                            require_text=True, user_core=5, item_core=0, sample_users=10, seed=3, **QUIET)
    _, rows = read_inter(os.path.join(folder, "shop.inter"))
    assert "B0029" not in {r[1] for r in rows}  # no meta, so no text: dropped
    assert len({r[0] for r in rows}) == 10
    again = convert_amazon(reviews_file, meta_file, "again", str(tmp_path / "data"), text=False,
                           require_text=True, user_core=5, item_core=0, sample_users=10, seed=3, **QUIET)
    assert read_inter(os.path.join(again, "again.inter"))[1] == rows  # seeded


@pytest.mark.parametrize("case,pattern", [
    ("mixed releases", "reviews and meta files of one release"),
    ("wrong --release", "--release 2023"),
    ("not reviews", "Python dict. Fix: --reviews"),
    ("images without model", "--image-model"),
    ("k-core too high", "no interaction survives"),
    ("unknown text field", "--text-fields"),
])
def test_bad_input_stops_with_one_error_line_and_keeps_earlier_output(tmp_path, capsys, case, pattern):
    raw = str(tmp_path / "raw")
    reviews_file, meta_file, _ = write_raw(raw, "2014")
    out = str(tmp_path / "data")
    convert_amazon(reviews_file, meta_file, "shop", out, text=False, **QUIET)
    before = open(os.path.join(out, "shop", "shop.inter")).read()
    args = ["amazon", "--reviews", reviews_file, "--meta", meta_file, "--name", "shop", "--out", out,
            "--no-text", "--no-progress", "--force"]
    if case == "mixed releases":
        args[4] = write_raw(str(tmp_path / "raw23"), "2023")[1]
    elif case == "wrong --release":
        args += ["--release", "2023"]
    elif case == "not reviews":
        with open(tmp_path / "junk.json", "w") as f:
            f.write("id,user,item\n1,2,3\n")
        args[2] = str(tmp_path / "junk.json")
    elif case == "images without model":
        os.makedirs(tmp_path / "img")
        args += ["--images", str(tmp_path / "img")]
    elif case == "k-core too high":
        args += ["--k-core", "50"]
    else:
        args += ["--text-fields", "title,colour"]
    capsys.readouterr()
    assert prepare_main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and pattern in err[0]
    assert open(os.path.join(out, "shop", "shop.inter")).read() == before


def test_mostly_unreadable_review_file_stops(tmp_path):
    reviews_file, meta_file, _ = write_raw(str(tmp_path / "raw"), "2018", gz=False)
    with open(reviews_file, "a") as f:
        f.write("garbage\n" * 400)
    with pytest.raises(PrepareError, match="unusable"):
        convert_amazon(reviews_file, meta_file, "shop", str(tmp_path / "data"), text=False, **QUIET)


# ----------------------------------------------------------------------------- features
def test_text_features_resume_after_a_kill_and_reuse_unchanged_content(tmp_path, monkeypatch):
    from recbole_mm.prepare import encoders, text

    folder = tmp_path / "data" / "shop"
    os.makedirs(folder)
    rows = [f"i{k}\t{WORDS[k % 8]} {WORDS[(k + 3) % 8]} {k}" for k in range(9)] + ["i9\t"]
    (folder / "shop.item").write_text("item_id:token\ttitle:token_seq\n" + "\n".join(rows) + "\n")
    model = tiny_text_model(str(tmp_path / "bert"))
    encode, _ = encoders.load_text_encoder(model)
    seen = []

    def counting(model_dir=None):
        def run(texts):
            seen.extend(texts)
            if fail_after[0] is not None and len(seen) > fail_after[0]:
                raise KeyboardInterrupt  # the run is killed here
            return encode(texts)

        return run, "tiny bert"

    monkeypatch.setattr(text, "load_text_encoder", counting)
    fail_after = [4]
    with pytest.raises(KeyboardInterrupt):
        text.prepare_text("shop", "title", str(tmp_path / "data"), model=model, batch_size=2, chunk_size=2, **QUIET)
    assert not (folder / "text_feat.npy").exists()
    fail_after[0], encoded_before = None, len(seen)
    text.prepare_text("shop", "title", str(tmp_path / "data"), model=model, batch_size=2, chunk_size=2, **QUIET)
    assert encoded_before == 6 and len(seen) - encoded_before == 5  # chunks of 2: 4 texts were kept
    feats = np.load(folder / "text_feat.npy")
    ids = (folder / "text_item_ids.txt").read_text().split()
    assert ids == [f"i{k}" for k in range(9)]  # i9 has no text: no row, so missing
    texts = [r.split("\t")[1] for r in rows[:9]]
    assert np.allclose(feats, encode(texts), atol=1e-5)  # same as one uninterrupted pass
    rows[2] = "i2\tsuper glue 2 changed"
    (folder / "shop.item").write_text("item_id:token\ttitle:token_seq\n" + "\n".join(rows) + "\n")
    seen.clear()
    text.prepare_text("shop", "title", str(tmp_path / "data"), model=model, chunk_size=2, **QUIET)
    assert seen == ["super glue 2 changed"]  # only the changed content is encoded


def test_dataset_marks_items_without_text_or_image_missing(tmp_path, in_tmp):
    from PIL import Image

    from recbole_mm.config import Config
    from recbole_mm.quick_start import create_dataset

    reviews_file, meta_file, _ = write_raw(str(tmp_path / "raw"), "2014")
    images = tmp_path / "img"
    os.makedirs(images)
    rng = np.random.default_rng(0)
    for k in range(25):
        Image.fromarray(rng.integers(0, 255, (20, 20, 3)).astype(np.uint8)).save(images / f"B{k:04d}.png")
    (images / "B0025.jpg").write_bytes(b"not an image")
    out = str(tmp_path / "data")
    convert_amazon(reviews_file, meta_file, "shop", out, images=str(images),
                   image_model=tiny_vision_model(str(tmp_path / "vit")),
                   text_model=tiny_text_model(str(tmp_path / "bert")), **QUIET)
    config = Config("SASRec", "shop", parse_argv=False, config_dict=tiny_run_config(tmp_path, data_path=out))
    dataset = create_dataset(config)
    tokens = dataset.field2id_token[dataset.iid_field]
    image_present = dict(zip(tokens, dataset.item_feature_mask["image"].tolist()))
    text_present = dict(zip(tokens, dataset.item_feature_mask["text"].tolist()))
    assert image_present["B0001"] and not image_present["B0025"]  # corrupt file: missing
    assert not any(image_present[t] for t in tokens[1:] if int(t[1:]) >= 25)  # no file: missing
    assert not text_present["B0029"] and text_present["B0001"]  # no meta line: missing
    manifest = json.load(open(os.path.join(out, "shop", "prepare_manifest.images.image_feat.json")))
    assert manifest["report"]["unreadable_images"] == 1
    assert manifest["report"]["unreadable_examples"] == ["B0025"]


# ----------------------------------------------------------------------------- end to end
@pytest.mark.parametrize("release", ["2014", "2018", "2023"])
def test_raw_release_converts_then_trains_one_epoch_by_name(tmp_path, in_tmp, release):
    from recbole_mm.quick_start import run_recbole_mm

    reviews_file, meta_file, _ = write_raw(str(tmp_path / "raw"), release)
    out = str(tmp_path / "data")
    assert prepare_main(["amazon", "--reviews", reviews_file, "--meta", meta_file, "--name", "shop",
                         "--out", out, "--text-model", tiny_text_model(str(tmp_path / "bert")),
                         "--no-progress"]) == 0
    result = run_recbole_mm("MuSTRec", "shop", saved=False, config_dict=tiny_run_config(
        tmp_path, data_path=out, embedding_size=8, hidden_size=8, inner_size=16, knn_k=3))
    assert all(0.0 <= v <= 1.0 for v in result["test_result"].values())


def test_cli_runs_from_the_documented_command(tmp_path):
    reviews_file, meta_file, _ = write_raw(str(tmp_path / "raw"), "2023")
    result = subprocess.run([sys.executable, "-m", "recbole_mm.prepare", "amazon", "--reviews", reviews_file,
                             "--meta", meta_file, "--name", "shop", "--no-text"], cwd=tmp_path,
                            capture_output=True, text=True, env={**os.environ, "PYTHONPATH": REPO_ROOT}, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "5/5-core (users/items)" in result.stdout and "Amazon 2023" in result.stdout
    assert os.path.isfile(tmp_path / "dataset" / "shop" / "shop.yaml")
