"""Foundation: config layering, registry, feature alignment, bad input, splits, evaluation."""
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from recbole.data import data_preparation

from conftest import REPO_ROOT, feature_value, ml100k_config, tiny_run_config, write_tiny_dataset
from recbole_mm import registry
from recbole_mm.config import EMBEDDING_SIZE_MODELS, RENAMED_KEYS, Config, ConfigError
from recbole_mm.data.dataset import DatasetError, MultimodalSequentialDataset
from recbole_mm.data.features import FeatureFileError
from recbole_mm.quick_start import DatasetNotFoundError, create_dataset


def tiny_config(info, tmp_path, model="SASRec", **overrides):
    config_dict = tiny_run_config(tmp_path, data_path=info["data_path"],
                                  multimodal_features=info["features"], **overrides)
    return Config(model=model, dataset=info["name"], config_dict=config_dict, parse_argv=False)


def load(info, tmp_path, **overrides):
    config = tiny_config(info, tmp_path, **overrides)
    dataset = create_dataset(config)
    train, valid, test = data_preparation(config, dataset)
    return config, dataset, train, valid, test


# ----------------------------------------------------------------------------- registry/config
def test_registry_finds_recbole_and_rejects_unknown():
    from recbole.model.sequential_recommender.sasrec import SASRec

    assert registry.get_model("SASRec") is SASRec
    assert registry.get_model("sasrec") is SASRec
    with pytest.raises(registry.UnknownNameError, match="unknown model 'NoSuchModel'") as error:
        registry.get_model("NoSuchModel")
    assert "Did you mean" not in str(error.value)
    assert "BERT4Rec, " in str(error.value) and "MuSTRec" in str(error.value)  # class names as written
    with pytest.raises(registry.UnknownNameError, match="Did you mean SASRec[?]"):
        registry.get_model("SASRecc")
    with pytest.raises(registry.UnknownNameError, match="Did you mean MuSTRec[?]"):
        registry.get_model("mustrek")


def test_overall_yaml_does_not_override_baseline_defaults(tmp_path):
    config = Config(model="SASRec", dataset="ml-100k", config_dict=tiny_run_config(tmp_path), parse_argv=False)
    assert config["hidden_size"] == 64  # SASRec's own default survives our layers
    assert config["valid_metric"] == "NDCG@20" and config["topk"] == [10, 20]
    assert config["eval_args"]["split"] == {"LS": "valid_and_test"} and config["eval_args"]["mode"] == {"valid": "full", "test": "full"}
    assert config["mask_history_items"] is False


def test_config_layers_and_argv(tmp_path, monkeypatch):
    yaml_file = tmp_path / "x.yaml"
    yaml_file.write_text("hidden_size: 24\nlearning_rate: 0.01\n")
    monkeypatch.setattr(sys, "argv", ["prog", "--learning_rate=0.02"])
    base = dict(config_file_list=[str(yaml_file)], config_dict={"learning_rate": 0.005})
    config = Config(model="SASRec", dataset="ml-100k", parse_argv=False, **base)
    assert config["hidden_size"] == 24 and config["learning_rate"] == 0.005  # dict beats file
    config = Config(model="SASRec", dataset="ml-100k", parse_argv=True, **base)
    assert config["learning_rate"] == 0.02  # command line beats dict


@pytest.mark.parametrize("key,value", [("epochs", -1), ("learning_rate", "fast"), ("mask_history_items", "yes"),
                                       ("fused_optimizer", "auto")])
def test_bad_config_values(key, value):
    with pytest.raises(ConfigError, match=key):
        Config(model="SASRec", dataset="ml-100k", config_dict={key: value}, parse_argv=False)


def test_bad_yaml_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [1, 2\n")
    with pytest.raises(ConfigError, match="bad.yaml"):
        Config(model="SASRec", dataset="ml-100k", config_file_list=[str(bad)], parse_argv=False)
    with pytest.raises(ConfigError, match="not found"):
        Config(model="SASRec", dataset="ml-100k", config_file_list=[str(tmp_path / "no.yaml")], parse_argv=False)


# ----------------------------------------------------------------------------- one vocabulary
@pytest.mark.parametrize("old", sorted(RENAMED_KEYS))
@pytest.mark.parametrize("source", ["dict", "file", "argv"])
def test_renamed_keys_are_errors_naming_the_new_key(tmp_path, monkeypatch, old, source):
    new = RENAMED_KEYS[old]
    kwargs = dict(model="MDSRec", dataset="ml-100k", parse_argv=source == "argv")
    if source == "dict":
        kwargs["config_dict"] = {old: ["text"]}
    elif source == "file":
        path = tmp_path / "old.yaml"
        path.write_text(f"{old}: [text]\n")
        kwargs["config_file_list"] = [str(path)]
    else:
        monkeypatch.setattr(sys, "argv", ["prog", f"--{old}=['text']"])
    with pytest.raises(ConfigError, match=rf"'{old}' was renamed to '{new}'"):
        Config(**kwargs)


@pytest.mark.parametrize("model", EMBEDDING_SIZE_MODELS)
def test_width_is_embedding_size_for_our_models(model):
    with pytest.raises(ConfigError, match="embedding_size"):
        Config(model=model, dataset="ml-100k", config_dict={"hidden_size": 7, "embedding_size": 8}, parse_argv=False)
    same = Config(model=model, dataset="ml-100k", config_dict={"hidden_size": 8, "embedding_size": 8}, parse_argv=False)
    assert same["embedding_size"] == 8  # equal values: one protocol file serves the baselines too
    baseline = Config(model="SASRec", dataset="ml-100k", config_dict={"hidden_size": 7, "embedding_size": 8},
                      parse_argv=False)
    assert baseline["hidden_size"] == 7  # RecBole's models keep their own width key


def test_modalities_key_is_a_dataset_cache_parameter():
    config = Config(model="SASRec", dataset="ml-100k", config_dict={"modalities": ["text"]}, parse_argv=False)
    assert "modalities" in config.parameters["Dataset"]
    from recbole.utils.argument_list import dataset_arguments

    assert "modalities" in dataset_arguments  # RecBole's saved-dataset check compares these keys


def test_modalities_restricts_the_loaded_features(tmp_path, in_tmp):
    info = write_tiny_dataset(str(tmp_path / "data"))
    _, dataset, *_ = load(info, tmp_path, modalities=["image"])
    assert dataset.modalities == ["image"] and list(dataset.item_features) == ["image"]


# ----------------------------------------------------------------------------- alignment
@pytest.mark.parametrize("with_ids", [False, True])
def test_features_follow_their_items_under_remapping(tmp_path, in_tmp, with_ids):
    info = write_tiny_dataset(str(tmp_path / "data"), with_ids=with_ids, shuffle_tokens=True)
    config, dataset, *_ = load(info, tmp_path)
    tokens = dataset.field2id_token[dataset.iid_field]
    assert [int(t) for t in tokens[1:]] != sorted(int(t) for t in tokens[1:])  # really remapped
    assert dataset.modalities == ["text", "image"]
    for m_index, (name, dim) in enumerate(info["dims"].items()):
        features, mask = dataset.item_features[name], dataset.item_feature_mask[name]
        assert features.shape == (len(tokens), dim) and features.dtype == torch.float32
        assert not mask[0] and torch.all(features[0] == 0)
        for internal in range(1, len(tokens)):
            expected = feature_value(m_index, int(tokens[internal]), dim)
            np.testing.assert_array_equal(features[internal].numpy(), expected)
        assert mask[1:].all()


def test_filtered_items_and_missing_rows(tmp_path, in_tmp):
    info = write_tiny_dataset(str(tmp_path / "data"), n_items=40)
    text = np.load(os.path.join(info["folder"], "text_feat.npy"))
    text[5] = 0.0  # an all-zero row marks a missing feature
    np.save(os.path.join(info["folder"], "text_feat.npy"), text)
    np.save(os.path.join(info["folder"], "image_feat.npy"),
            np.concatenate([np.load(os.path.join(info["folder"], "image_feat.npy")), np.ones((7, 4), np.float32)]))
    _, dataset, *_ = load(info, tmp_path)
    tokens = list(dataset.field2id_token[dataset.iid_field])
    if "5" in tokens:
        assert not dataset.item_feature_mask["text"][tokens.index("5")]
        assert dataset.item_feature_mask["image"][tokens.index("5")]
    assert dataset.item_feature_mask["text"].sum() == len(tokens) - 1 - ("5" in tokens)


# ----------------------------------------------------------------------------- bad input
def _break(info, kind):
    path = os.path.join(info["folder"], "text_feat.npy")
    good = np.load(path)
    if kind == "missing":
        os.remove(path)
    elif kind == "rows":
        np.save(path, good[:10])
    elif kind == "nan":
        good[3, 1] = np.nan
        np.save(path, good)
    elif kind == "dims":
        info["features"]["text"]["dim"] = 7
    elif kind == "ndim":
        np.save(path, good.reshape(-1))
    elif kind == "dtype":
        np.save(path, good.astype(np.int64))
    return path


@pytest.mark.parametrize("kind,pattern", [
    ("missing", "not found"), ("rows", "has 10 rows"), ("nan", "NaN"), ("dims", "dimension 6"),
    ("ndim", "expected 2-d"), ("dtype", "expected float"),
])
def test_bad_feature_files_give_one_clear_error(tmp_path, in_tmp, kind, pattern):
    info = write_tiny_dataset(str(tmp_path / "data"))
    path = _break(info, kind)
    with pytest.raises(FeatureFileError, match=pattern) as err:
        load(info, tmp_path)
    assert os.path.basename(path) in str(err.value) and "Fix" in str(err.value)


def test_unknown_modality_and_empty_dataset(tmp_path, in_tmp):
    info = write_tiny_dataset(str(tmp_path / "data"))
    with pytest.raises(FeatureFileError, match=r"unknown modality \['audio'\].*\['text', 'image'\]"):
        load(info, tmp_path, modalities=["audio"])
    with pytest.raises(DatasetError, match="no usable sequences after filtering"):
        load(info, tmp_path, user_inter_num_interval="[1000,inf)")


def test_missing_dataset_messages(tmp_path):
    for name, pattern in [("baby", r"baby\.inter.*image_feat\.npy.*prepare mmrec --src SRC --name baby"),
                          ("nowhere", "expected .*nowhere.inter")]:
        config = Config(model="SASRec", dataset=name, parse_argv=False,
                        config_dict=tiny_run_config(tmp_path, data_path=str(tmp_path)))
        with pytest.raises(DatasetNotFoundError, match=pattern):
            create_dataset(config)


@pytest.mark.parametrize("args,pattern", [
    (["--model=NoSuchModel"], "unknown model 'NoSuchModel'"),
    (["--model=SASRec", "--dataset=baby"], "python -m recbole_mm.prepare mmrec"),
])
def test_cli_errors_exit_2_without_traceback(tmp_path, args, pattern):
    proc = subprocess.run([sys.executable, os.path.join(REPO_ROOT, "run_recbole_mm.py"), *args,
                           f"--data_path={tmp_path}"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and pattern.split("'")[0] in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("error: ")


# ----------------------------------------------------------------------------- splits / leakage
def test_training_split_excludes_valid_and_test(tmp_path, in_tmp):
    info = write_tiny_dataset(str(tmp_path / "data"), n_users=25, n_items=30)
    _, dataset, train, valid, test = load(info, tmp_path)
    train_ds = train.dataset
    assert train_ds.split_name == "train" and valid.dataset.split_name == "valid"
    tokens = list(dataset.field2id_token[dataset.iid_field])
    users = list(dataset.field2id_token[dataset.uid_field])
    matrix = train_ds.train_interaction_matrix()
    sequences = train_ds.train_sequences()
    for raw_user, raw_items in info["sequences"].items():
        u = users.index(str(raw_user))
        expected = [tokens.index(str(i)) for i in raw_items[:-2]]  # all but valid and test targets
        assert sequences[u].tolist() == expected
        assert sorted(matrix[u].indices.tolist()) == sorted(set(expected))
    with pytest.raises(DatasetError, match="training split"):
        valid.dataset.train_interaction_matrix()


def test_valid_and_test_only_items_have_no_training_interactions(tmp_path, in_tmp):
    info = write_tiny_dataset(str(tmp_path / "data"), n_users=20, n_items=30)
    lines = open(os.path.join(info["folder"], "tiny.inter")).read().splitlines()
    lines += ["900\t5\t0", "900\t6\t1", "900\t7\t2", "900\t98\t3", "900\t99\t4"]  # 98/99 only in valid/test
    open(os.path.join(info["folder"], "tiny.inter"), "w").write("\n".join(lines) + "\n")
    for name in info["features"]:
        path = os.path.join(info["folder"], f"{name}_feat.npy")
        np.save(path, np.concatenate([np.load(path), np.ones((70, np.load(path).shape[1]), np.float32)]))
    _, dataset, train, *_ = load(info, tmp_path)
    tokens = list(dataset.field2id_token[dataset.iid_field])
    matrix = train.dataset.train_interaction_matrix()
    assert matrix[:, tokens.index("98")].nnz == 0 and matrix[:, tokens.index("99")].nnz == 0
    assert all(tokens.index("98") not in s and tokens.index("99") not in s for s in train.dataset.train_sequences())


# ----------------------------------------------------------------------------- history masking
def test_history_mask_hand_case(tmp_path, in_tmp):
    folder = tmp_path / "data" / "hand"
    folder.mkdir(parents=True)
    # user 0: a b a c d -> valid target c (history a b a), test target d (history a b a c)
    # user 1: b c d b   -> valid target d, test target b (b is in history but is the target)
    rows = [(0, "a"), (0, "b"), (0, "a"), (0, "c"), (0, "d"), (1, "b"), (1, "c"), (1, "d"), (1, "b")]
    lines = ["user_id:token\titem_id:token\ttimestamp:float"] + [f"{u}\t{i}\t{t}" for t, (u, i) in enumerate(rows)]
    (folder / "hand.inter").write_text("\n".join(lines) + "\n")
    config = Config(model="SASRec", dataset="hand", parse_argv=False, config_dict=tiny_run_config(
        tmp_path, data_path=str(tmp_path / "data"), mask_history_items=True))
    dataset = create_dataset(config)
    _, valid, test = dataset.build()
    tok = list(dataset.field2id_token[dataset.iid_field])
    usr = list(dataset.field2id_token[dataset.uid_field])
    from recbole_mm.data.dataset import TARGET_POSITION_FIELD

    def masked(split):
        inter = split.inter_feat
        rows_idx, cols = split.history_before(inter["user_id"], inter[TARGET_POSITION_FIELD])
        out = {}
        for r, c in zip(rows_idx.tolist(), cols.tolist()):
            out.setdefault(usr[int(inter["user_id"][r])], set()).add(tok[c])
        return out

    assert masked(valid) == {"0": {"a", "b"}, "1": {"b", "c"}}
    assert masked(test) == {"0": {"a", "b", "c"}, "1": {"c", "d"}}


# ----------------------------------------------------------------------------- end to end
def test_sasrec_matches_recbole_run_recbole(tmp_path, in_tmp, monkeypatch):
    """A RecBole baseline through our entry gives exactly RecBole's own metrics."""
    from recbole.quick_start import run_recbole

    from recbole_mm.quick_start import run_recbole_mm

    info = write_tiny_dataset(str(tmp_path / "data"), n_users=150, n_items=80, seq_len=(5, 12))
    monkeypatch.setattr(sys, "argv", ["prog"])  # RecBole's run_recbole parses argv
    config_dict = tiny_run_config(
        tmp_path, data_path=info["data_path"], hidden_size=16, inner_size=32, n_layers=1, n_heads=1,
        epochs=2, train_batch_size=256,
        # our protocol keys, spelled out for RecBole's own Config
        train_neg_sample_args=None, metrics=["Hit", "NDCG", "MRR"], topk=[10, 20], valid_metric="NDCG@20",
        eval_args={"split": {"LS": "valid_and_test"}, "order": "TO", "group_by": "user", "mode": "full"},
        load_col={"inter": ["user_id", "item_id", "timestamp"]})
    ours = run_recbole_mm("SASRec", "tiny", config_dict=dict(config_dict), saved=False)
    theirs = run_recbole("SASRec", "tiny", config_dict=dict(config_dict), saved=False)
    assert ours["test_result"] == theirs["test_result"]
    assert ours["best_valid_result"] == theirs["best_valid_result"]
    assert ours["test_result"]["hit@20"] > 0


def test_default_dataset_end_to_end_with_checkpoint(tmp_path, in_tmp):
    """The embedded ml-100k (features built offline on first use), trained, saved and reloaded.
    Users are cut to those with 20-24 interactions to keep the run short."""
    from recbole_mm.quick_start import load_data_and_model, run_recbole_mm

    config_dict = ml100k_config(tmp_path, hidden_size=16, inner_size=32, n_layers=1, n_heads=1,
                                train_batch_size=512, user_inter_num_interval="[20,24]")
    result = run_recbole_mm("SASRec", "ml-100k", config_dict=config_dict, saved=True)  # torch>=2.6 load path
    assert set(result["test_result"]) == {f"{m}@{k}" for m in ("hit", "ndcg", "mrr") for k in (10, 20)}
    checkpoint = result["checkpoint"]
    assert os.path.dirname(checkpoint) == str(tmp_path / "saved") and os.path.isfile(checkpoint)
    config, model, dataset, *_ = load_data_and_model(checkpoint)
    assert isinstance(dataset, MultimodalSequentialDataset) and dataset.modalities == ["text", "genre"]
    assert dataset.item_features["text"].shape == (dataset.item_num, 384)
    assert dataset.item_features["genre"].shape == (dataset.item_num, 19)
    # genre rows are multi-hot, every real movie has a genre, MiniLM rows are unit length
    assert set(np.unique(dataset.item_features["genre"].numpy())) <= {0.0, 1.0}
    assert bool(dataset.item_feature_mask["genre"][1:].all())
    norms = dataset.item_features["text"][1:].norm(dim=1)
    assert torch.allclose(norms, torch.ones_like(norms), atol=1e-4)


@pytest.mark.parametrize("mask", [False, True])
def test_mask_history_items_in_full_sort_evaluation(tmp_path, in_tmp, mask):
    """With masking on, exactly the items seen before the target (minus the target) get -inf."""
    from recbole_mm.registry import get_model, get_trainer

    info = write_tiny_dataset(str(tmp_path / "data"), n_users=20, n_items=30, seq_len=(5, 8))
    lines = open(os.path.join(info["folder"], "tiny.inter")).read().splitlines()
    lines += ["77\t1\t0", "77\t2\t1", "77\t1\t2", "77\t3\t3", "77\t1\t4"]  # repeat as test target
    open(os.path.join(info["folder"], "tiny.inter"), "w").write("\n".join(lines) + "\n")
    config, dataset, train, valid, test = load(info, tmp_path, mask_history_items=mask,
                                               hidden_size=8, inner_size=8, n_layers=1, n_heads=1)
    model = get_model("SASRec")(config, train.dataset)
    trainer = get_trainer(config["MODEL_TYPE"], "SASRec")(config, model)
    captured = []
    collect = trainer.eval_collector.eval_batch_collect

    def capture(scores, inter, positive_u, positive_i):
        captured.append((scores.clone(), inter))
        return collect(scores, inter, positive_u, positive_i)

    trainer.eval_collector.eval_batch_collect = capture
    trainer.evaluate(test, load_best_model=False)
    tokens = list(dataset.field2id_token[dataset.iid_field])
    users = list(dataset.field2id_token[dataset.uid_field])
    sequences = {**info["sequences"], 77: [1, 2, 1, 3, 1]}
    checked = 0
    for scores, inter in captured:
        for r in range(len(inter)):
            raw_seq = sequences[int(users[int(inter["user_id"][r])])]
            target = tokens.index(str(raw_seq[-1]))
            seen = {tokens.index(str(i)) for i in raw_seq[:-1]} - {target}
            masked = set(torch.nonzero(torch.isinf(scores[r])).flatten().tolist()) - {0}
            assert masked == (seen if mask else set())
            assert torch.isfinite(scores[r, target])
            checked += 1
    assert checked == len(test.dataset)


def test_scientific_loads_with_expected_counts(tmp_path, in_tmp, scientific_dir):
    config = Config(model="SASRec", dataset="scientific", parse_argv=False, config_dict=tiny_run_config(
        tmp_path, data_path=os.path.dirname(scientific_dir), graph_cache_dir=str(tmp_path / "cache")))
    dataset = create_dataset(config)
    train, valid, test = data_preparation(config, dataset)
    assert dataset.user_num - 1 == 2928 and dataset.item_num - 1 == 1585
    assert (len(train.dataset), len(valid.dataset), len(test.dataset)) == (10928, 2928, 2928)
    assert dataset.modalities == ["text"] and bool(dataset.item_feature_mask["text"][1:].all())
    raw = np.load(os.path.join(scientific_dir, "text_feat.npy"))
    tokens = dataset.field2id_token[dataset.iid_field]
    np.testing.assert_array_equal(dataset.item_features["text"][7].numpy(), raw[int(tokens[7])])


def test_dataset_save_and_reload_keeps_features_and_detects_stale_files(tmp_path, in_tmp):
    info = write_tiny_dataset(str(tmp_path / "data"))
    config, dataset, *_ = load(info, tmp_path, save_dataset=True)
    saved = tmp_path / "saved" / "tiny-MultimodalSequentialDataset.pth"
    assert saved.is_file()
    config2 = tiny_config(info, tmp_path)
    reloaded = create_dataset(config2)
    assert reloaded is not dataset and torch.equal(reloaded.item_features["text"], dataset.item_features["text"])
    assert reloaded.field2id_token[reloaded.iid_field].tolist() == dataset.field2id_token[dataset.iid_field].tolist()
    # replace a feature file under the same name: the saved dataset must not be reused
    path = os.path.join(info["folder"], "text_feat.npy")
    np.save(path, np.load(path) * 2 + 1)
    os.utime(path, (1, 1))
    fresh = create_dataset(tiny_config(info, tmp_path))
    assert torch.allclose(fresh.item_features["text"][1:], dataset.item_features["text"][1:] * 2 + 1)


def test_ml100k_feature_cache_is_reused_and_rebuilt_on_change(tmp_path, monkeypatch):
    import shutil

    import recbole

    from recbole_mm.data import default

    calls = []

    def fake_encode(texts, batch_size=128):
        calls.append(len(texts))
        return np.tile(np.linspace(0.1, 1.0, 384, dtype=np.float32), (len(texts), 1))

    monkeypatch.setattr(default, "encode_texts", fake_encode)
    source = tmp_path / "src"
    source.mkdir()
    shutil.copy(os.path.join(os.path.dirname(recbole.__file__), "dataset_example", "ml-100k", "ml-100k.item"), source)
    out = tmp_path / "features"
    default.build_ml100k_features({"data_path": str(source)}, str(out))
    first = (out / "text_feat.npy").stat().st_mtime_ns
    default.build_ml100k_features({"data_path": str(source)}, str(out))
    assert calls == [1682] and (out / "text_feat.npy").stat().st_mtime_ns == first  # reused
    genre = np.load(out / "genre_feat.npy")
    ids = (out / "item_ids.txt").read_text().split()
    assert genre.shape == (1682, 19) and ids[0] == "1" and genre[0].sum() == 3  # Toy Story: 3 genres
    with open(source / "ml-100k.item", "a") as handle:
        handle.write("1683\tNew Movie\t1998\tDrama\n")
    default.build_ml100k_features({"data_path": str(source)}, str(out))
    assert calls == [1682, 1683] and np.load(out / "text_feat.npy").shape == (1683, 384)
    genre_file = out / "genre_feat.npy"
    damaged = bytearray(genre_file.read_bytes())
    damaged[-3] ^= 0x40  # flipped bytes in a value: still a readable .npy, but never used
    genre_file.write_bytes(bytes(damaged))
    with pytest.warns(UserWarning, match="genre_feat.npy failed the checksum"):
        default.build_ml100k_features({"data_path": str(source)}, str(out))
    assert calls == [1682, 1683, 1683] and set(np.unique(np.load(genre_file))) <= {0.0, 1.0}


def test_model_lookup_leaves_anomaly_detection_off():
    registry.get_model("SASRec")
    registry.get_model("SINE")  # its module turns anomaly detection on at import
    assert not torch.is_anomaly_enabled()


def test_graph_cache_never_goes_into_foreign_data_folders(tmp_path, in_tmp, scientific_dir):
    config = Config(model="SASRec", dataset="scientific", parse_argv=False, config_dict=tiny_run_config(
        tmp_path, data_path=os.path.dirname(scientific_dir)))
    dataset = create_dataset(config)
    assert dataset.graph_cache_dir.startswith(str(tmp_path / "saved"))
    assert not os.path.realpath(dataset.graph_cache_dir).startswith(os.path.realpath(scientific_dir))


# ----------------------------------------------------------------------------- model docs
@pytest.mark.parametrize("model", EMBEDDING_SIZE_MODELS)
def test_each_model_points_to_its_own_doc_page(model):
    page = os.path.join(REPO_ROOT, "docs", "models", f"{model}.md")
    assert os.path.isfile(page)
    assert f"docs/models/{model}.md" in sys.modules[registry.get_model(model).__module__].__doc__
    with open(os.path.join(REPO_ROOT, "properties", "model", f"{model}.yaml"), encoding="utf-8") as handle:
        assert f"docs/models/{model}.md" in handle.read()
