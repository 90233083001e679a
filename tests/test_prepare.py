"""Converters of ``python -m recbole_mm.prepare``: round trips on fixtures written here."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from recbole.data import data_preparation

from conftest import REPO_ROOT, tiny_resnet_model, tiny_run_config, tiny_text_model, tiny_vision_model
from recbole_mm.config import Config
from recbole_mm.prepare.__main__ import main as prepare_main
from recbole_mm.prepare.io import PrepareError
from recbole_mm.prepare.mmrec import convert_mmrec
from recbole_mm.quick_start import create_dataset

QUIET = {"show_progress": False, "log": lambda *a: None}


# ------------------------------------------------------------------------------- MMRec
def write_mmrec(src, name="mini", n_items=9):
    """MMRec-style folder: rows shuffled within users, a timestamp tie at a history end, and a
    user (u2) whose x_label valid row is not the second-to-last by time."""
    os.makedirs(src, exist_ok=True)
    rows = [  # userID itemID rating timestamp x_label
        (0, 3, 5, 30, 0), (0, 1, 4, 10, 0), (0, 5, 5, 40, 2), (0, 2, 3, 20, 0), (0, 4, 5, 40, 1),
        (1, 6, 5, 7, 0), (1, 2, 5, 5, 0), (1, 7, 5, 9, 2), (1, 0, 5, 8, 1),
        (2, 8, 5, 1, 0), (2, 1, 5, 4, 1), (2, 3, 5, 2, 0), (2, 6, 5, 5, 2), (2, 4, 5, 6, 0),
    ]
    with open(os.path.join(src, f"{name}.inter"), "w") as f:
        f.write("userID\titemID\trating\ttimestamp\tx_label\n")
        f.writelines("\t".join(map(str, r)) + "\n" for r in rows)
    rng = np.random.default_rng(0)
    image = rng.standard_normal((n_items, 6)).astype(np.float32)
    text = rng.standard_normal((n_items, 4)).astype(np.float32)
    np.save(os.path.join(src, "image_feat.npy"), image)
    np.save(os.path.join(src, "text_feat.npy"), text)
    return rows, image, text


def read_inter(path):
    with open(path) as f:
        header = f.readline().rstrip("\n").split("\t")
        return header, [line.rstrip("\n").split("\t") for line in f]


def recbole_split(data_path, name, tmp_path):
    config = Config(model="SASRec", dataset=name, parse_argv=False, config_dict=tiny_run_config(
        tmp_path, data_path=str(data_path), multimodal_features={"text": {"file": "text_feat.npy"}}))
    dataset = create_dataset(config)
    _, valid, test = data_preparation(config, dataset)
    users = dataset.field2id_token[dataset.uid_field]
    items = dataset.field2id_token[dataset.iid_field]

    def targets(split):
        inter = split.dataset.inter_feat
        return {users[u]: items[i] for u, i in zip(inter[dataset.uid_field].tolist(),
                                                   inter[dataset.iid_field].tolist())}

    return targets(valid), targets(test)


def test_mmrec_loo_round_trip(tmp_path, in_tmp):
    rows, image, text = write_mmrec(str(tmp_path / "src"))
    out = tmp_path / "dataset"
    folder = convert_mmrec(str(tmp_path / "src"), "mini", str(out), **QUIET)
    header, lines = read_inter(os.path.join(folder, "mini.inter"))
    assert header == ["user_id:token", "item_id:token", "rating:float", "timestamp:float"]
    # user 0: by (timestamp, source row): 1, 2, 3, then the tie at 40 in file order: 5, 4
    assert [l[1] for l in lines if l[0] == "0"] == ["1", "2", "3", "5", "4"]
    assert sorted(tuple(map(int, l)) for l in lines) == sorted((u, i, r, t) for u, i, r, t, _ in rows)
    assert np.array_equal(np.load(os.path.join(folder, "image_feat.npy")), image)
    assert np.array_equal(np.load(os.path.join(folder, "text_feat.npy")), text)
    manifest = json.load(open(os.path.join(folder, "prepare_manifest.mmrec.json")))
    assert manifest["report"]["users_whose_x_label_is_not_their_last_two_rows"] == 2  # users 0, 2
    valid, test = recbole_split(out, "mini", tmp_path)
    assert valid == {"0": "5", "1": "0", "2": "6"} and test == {"0": "4", "1": "7", "2": "4"}


def test_mmrec_x_label_split_reproduced_by_leave_one_out(tmp_path, in_tmp):
    write_mmrec(str(tmp_path / "src"))
    out = tmp_path / "dataset"
    folder = convert_mmrec(str(tmp_path / "src"), "mini", str(out), split="x_label", **QUIET)
    header, lines = read_inter(os.path.join(folder, "mini.inter"))
    # user 2: train 8, 3, 4 (times 1, 2, 6), then valid 1 (time 4 -> raised to 6), test 6 (5 -> 6)
    assert [(l[1], l[3]) for l in lines if l[0] == "2"] == [("8", "1"), ("3", "2"), ("4", "6"),
                                                            ("1", "6"), ("6", "6")]
    manifest = json.load(open(os.path.join(folder, "prepare_manifest.mmrec.json")))
    assert manifest["report"]["users_with_timestamps_raised"] == 1
    assert manifest["report"]["users_timestamps_raised_examples"] == ["2"]
    valid, test = recbole_split(out, "mini", tmp_path)
    assert valid == {"0": "4", "1": "0", "2": "1"} and test == {"0": "5", "1": "7", "2": "6"}


def test_mmrec_rerun_is_a_no_op_and_source_change_redoes(tmp_path):
    write_mmrec(str(tmp_path / "src"))
    messages = []
    kwargs = {"show_progress": False, "log": messages.append}
    folder = convert_mmrec(str(tmp_path / "src"), "mini", str(tmp_path / "out"), **kwargs)
    inter = os.path.join(folder, "mini.inter")
    stamp = os.stat(inter).st_mtime_ns
    convert_mmrec(str(tmp_path / "src"), "mini", str(tmp_path / "out"), **kwargs)
    assert "up to date" in messages[-1] and os.stat(inter).st_mtime_ns == stamp
    with open(tmp_path / "src" / "mini.inter", "a") as f:
        f.write("3\t2\t5\t1\t0\n")
    convert_mmrec(str(tmp_path / "src"), "mini", str(tmp_path / "out"), **kwargs)
    assert any(l[0] == "3" for l in read_inter(inter)[1])
    assert not [n for n in os.listdir(folder) if n.startswith(".tmp-")]


def test_damaged_prepared_feature_file_is_refused_then_rebuilt(tmp_path, in_tmp, capsys):
    """The manifest records each output's SHA-256: a feature file with flipped bytes is never used
    (the loader names the manifest), and rerunning prepare rebuilds it with a warning."""
    from recbole_mm.data.features import FeatureFileError

    write_mmrec(str(tmp_path / "src"))
    folder = convert_mmrec(str(tmp_path / "src"), "mini", str(tmp_path / "out"), **QUIET)
    manifest = json.load(open(os.path.join(folder, "prepare_manifest.mmrec.json")))
    assert set(manifest["checksums"]) == set(manifest["outputs"])
    feature = os.path.join(folder, "text_feat.npy")
    good = open(feature, "rb").read()
    damaged = bytearray(good)
    damaged[-5] ^= 0x20  # a value byte: np.load would still read the file
    open(feature, "wb").write(bytes(damaged))
    with pytest.raises(FeatureFileError, match="text_feat.npy does not match the checksum prepare_manifest.mmrec.json"):
        recbole_split(tmp_path / "out", "mini", tmp_path)
    convert_mmrec(str(tmp_path / "src"), "mini", str(tmp_path / "out"), **QUIET)
    assert "text_feat.npy changed since the last run; rebuilding" in capsys.readouterr().err
    assert open(feature, "rb").read() == good
    recbole_split(tmp_path / "out", "mini", tmp_path)  # sound again


@pytest.mark.parametrize("damage,pattern", [
    ("no_x_label", "x_label"), ("few_rows", "rows but the interactions"), ("no_features", "no feature file"),
    ("bad_value", "non-numeric"), ("no_inter", "MMRec interaction file not found"),
])
def test_mmrec_bad_input_gives_one_clear_error(tmp_path, damage, pattern):
    src = str(tmp_path / "src")
    write_mmrec(src)
    inter = os.path.join(src, "mini.inter")
    if damage == "no_x_label":
        text = open(inter).read().replace("\tx_label", "").splitlines()
        open(inter, "w").write("\n".join([text[0]] + [l.rsplit("\t", 1)[0] for l in text[1:]]) + "\n")
    elif damage == "few_rows":
        np.save(os.path.join(src, "text_feat.npy"), np.ones((3, 4), np.float32))
    elif damage == "no_features":
        os.remove(os.path.join(src, "text_feat.npy"))
        os.remove(os.path.join(src, "image_feat.npy"))
    elif damage == "bad_value":
        open(inter, "a").write("5\tx\t5\t1\t0\n")
    else:
        os.remove(inter)
    with pytest.raises(PrepareError, match=pattern):
        convert_mmrec(src, "mini", str(tmp_path / "out"), split="x_label", **QUIET)
    assert not os.path.exists(tmp_path / "out" / "mini" / "mini.inter")


def test_cli_accepts_the_documented_command_and_exits_2_on_error(tmp_path, capsys):
    write_mmrec(str(tmp_path / "src"))
    code = prepare_main(["mmrec", "--src", str(tmp_path / "src"), "--name", "mini",
                         "--out", str(tmp_path / "data"), "--no-progress"])
    assert code == 0 and os.path.isfile(tmp_path / "data" / "mini" / "mini.inter")
    code = prepare_main(["mmrec", "--src", str(tmp_path / "nowhere"), "--name", "mini",
                         "--out", str(tmp_path / "data"), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and "error:" in err and "nowhere" in err and "Traceback" not in err
    # the module entry point runs (python -m), default --out = dataset under the cwd
    result = subprocess.run([sys.executable, "-m", "recbole_mm.prepare", "mmrec", "--src",
                             str(tmp_path / "src"), "--name", "mini", "--no-progress"],
                            cwd=tmp_path, capture_output=True, text=True,
                            env={**os.environ, "PYTHONPATH": REPO_ROOT})
    assert result.returncode == 0, result.stderr
    assert os.path.isfile(tmp_path / "dataset" / "mini" / "mini.inter")


# ------------------------------------------------------------------------------- UniSRec
def write_unisrec(src, name="uni"):
    os.makedirs(src, exist_ok=True)
    sequences = {"0": ["1", "2", "3", "4", "5"], "1": ["3", "1", "6", "5"], "2": ["2", "4", "6", "1"]}
    files = {"train": [], "valid": [], "test": []}
    for user, seq in sequences.items():
        for end in range(1, len(seq)):
            split = "test" if end == len(seq) - 1 else ("valid" if end == len(seq) - 2 else "train")
            files[split].append(f"{user}\t{' '.join(seq[:end])}\t{seq[end]}")
    for split, lines in files.items():
        with open(os.path.join(src, f"{name}.{split}.inter"), "w") as f:
            f.write("user_id:token\titem_id_list:token_seq\titem_id:token\n" + "\n".join(lines) + "\n")
    texts = {"1": "super glue", "2": "glue gel", "3": "nitrile gloves", "4": "red magnet",
             "5": "blue magnet", "6": "super glue"}
    with open(os.path.join(src, f"{name}.text"), "w") as f:
        f.write("item_id:token\ttext:token_seq\n" + "".join(f"{k}\t{v}\n" for k, v in texts.items()))
    return sequences, texts


def test_unisrec_round_trip_with_local_text_model(tmp_path, in_tmp):
    from recbole_mm.prepare.unisrec import convert_unisrec

    sequences, texts = write_unisrec(str(tmp_path / "src"))
    model = tiny_text_model(str(tmp_path / "bert"))
    out = tmp_path / "dataset"
    folder = convert_unisrec(str(tmp_path / "src"), "uni", str(out), model=model, **QUIET)
    header, lines = read_inter(os.path.join(folder, "uni.inter"))
    assert header == ["user_id:token", "item_id:token", "timestamp:float"]
    for user, seq in sequences.items():
        assert [l[1] for l in lines if l[0] == user] == seq
        assert [l[2] for l in lines if l[0] == user] == [str(p) for p in range(len(seq))]
    feats = np.load(os.path.join(folder, "text_feat.npy"))
    assert feats.shape == (7, 8) and np.all(feats[0] == 0)  # row r = token r; token 0 has no text
    assert np.allclose(feats[1], feats[6]) and not np.allclose(feats[1], feats[2])  # same text
    assert np.allclose(np.linalg.norm(feats[1:], axis=1), 1, atol=1e-5)
    valid, test = recbole_split(out, "uni", tmp_path)
    assert valid == {u: s[-2] for u, s in sequences.items()}
    assert test == {u: s[-1] for u, s in sequences.items()}


def test_unisrec_rejects_rows_that_are_not_prefixes(tmp_path):
    from recbole_mm.prepare.unisrec import convert_unisrec

    write_unisrec(str(tmp_path / "src"))
    path = tmp_path / "src" / "uni.valid.inter"
    lines = open(path).read().splitlines()
    lines[1] = lines[1].replace("1 2 3", "1 3 2")
    open(path, "w").write("\n".join(lines) + "\n")
    with pytest.raises(PrepareError, match="user 0"):
        convert_unisrec(str(tmp_path / "src"), "uni", str(tmp_path / "out"), text=False, **QUIET)


# ------------------------------------------------------------------------------- text, images
def test_text_features_from_item_field(tmp_path):
    from recbole_mm.prepare.text import prepare_text

    folder = tmp_path / "data" / "shop"
    os.makedirs(folder)
    with open(folder / "shop.item", "w") as f:
        f.write("item_id:token\ttitle:token_seq\tbrand:token\n"
                "a7\tsuper glue\tred\nb2\tnitrile gloves\t\nc9\t\t\nd4\tsuper glue\tred\n")
    model = tiny_text_model(str(tmp_path / "bert"))
    messages = []
    prepare_text("shop", "title,brand", str(tmp_path / "data"), model=model,
                 show_progress=False, log=messages.append)
    feats = np.load(folder / "text_feat.npy")
    ids = open(folder / "text_item_ids.txt").read().split()
    assert ids == ["a7", "b2", "d4"]  # c9 has no text: no row, so the dataset marks it missing
    assert feats.shape == (3, 8) and np.allclose(feats[0], feats[2])
    assert any("ids: text_item_ids.txt" in m for m in messages)
    stamp = os.stat(folder / "text_feat.npy").st_mtime_ns
    prepare_text("shop", "title,brand", str(tmp_path / "data"), model=model, show_progress=False,
                 log=messages.append)
    assert "up to date" in messages[-1] and os.stat(folder / "text_feat.npy").st_mtime_ns == stamp
    with pytest.raises(PrepareError, match="no field"):
        prepare_text("shop", "colour", str(tmp_path / "data"), model=model, **QUIET)


@pytest.mark.parametrize("build,dim", [(tiny_vision_model, 8), (tiny_resnet_model, 16)])
def test_image_features_with_local_vision_model(tmp_path, build, dim):
    from PIL import Image

    from recbole_mm.prepare.images import prepare_images

    folder = tmp_path / "data" / "shop"
    os.makedirs(folder)
    with open(folder / "shop.inter", "w") as f:
        f.write("user_id:token\titem_id:token\ttimestamp:float\n0\t10\t0\n0\t2\t1\n1\t3\t0\n1\t10\t1\n")
    images = tmp_path / "img"
    os.makedirs(images)
    Image.new("RGB", (20, 20), (255, 0, 0)).save(images / "2.png")
    Image.new("RGB", (20, 20), (255, 0, 0)).save(images / "10.JPG", format="JPEG")
    (images / "3.jpg").write_bytes(b"not an image")
    model = build(str(tmp_path / "vision"))
    messages = []
    prepare_images("shop", str(images), model, str(tmp_path / "data"), show_progress=False,
                   log=messages.append)
    feats = np.load(folder / "image_feat.npy")
    ids = open(folder / "image_item_ids.txt").read().split()
    assert ids == ["2", "10"] and feats.shape == (2, dim)  # 3 is unreadable: no row, so missing
    from recbole_mm.prepare.encoders import load_image_encoder

    with Image.open(images / "2.png") as img:  # reference: the encoder called directly
        assert np.allclose(feats[0], load_image_encoder(model)[0]([img.convert("RGB")])[0], atol=1e-6)
    manifest = json.load(open(folder / "prepare_manifest.images.image_feat.json"))
    assert manifest["report"]["unreadable_images"] == 1 and manifest["report"]["items_with_image"] == 2
    prepare_images("shop", str(images), model, str(tmp_path / "data"), show_progress=False,
                   log=messages.append)
    assert "up to date" in messages[-1]
    with pytest.raises(PrepareError, match="model folder"):
        prepare_images("shop", str(images), str(tmp_path / "none"), str(tmp_path / "data"), **QUIET)
