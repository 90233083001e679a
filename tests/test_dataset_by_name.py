"""Any prepared or hand-laid dataset runs by name: the dataset folder's own yaml
(``<data_path>/<name>/<name>.yaml``) and discovery of ``<modality>_feat.npy`` files."""
import os

import numpy as np
import pytest

from conftest import feature_value, tiny_run_config, write_tiny_dataset
from recbole_mm.config import Config, ConfigError
from recbole_mm.prepare.mmrec import convert_mmrec
from recbole_mm.quick_start import create_dataset, run_recbole_mm

TINY_MODELS = {  # embedding_size and hidden_size agree for every model
    "MuSTRec": dict(embedding_size=8, hidden_size=8, inner_size=16, knn_k=3),
    "MMSR": dict(embedding_size=16, hidden_size=16, code_num=4, code_reduce="pca"),
    "MDSRec": dict(embedding_size=16, hidden_size=16, inner_size=32, n_centers=4, knn_k=3),
    "IDAgnosticMMSR": dict(embedding_size=16, hidden_size=16, inner_size=32, fusion_heads=2, eval_step=1,
                           train_batch_size=16),
}


def write_mmrec_source(src, name, n_users=30, n_items=40, seed=0):
    """An MMRec folder: NAME.inter (userID itemID rating timestamp x_label) + two feature files."""
    rng = np.random.default_rng(seed)
    os.makedirs(src, exist_ok=True)
    lines = ["userID\titemID\trating\ttimestamp\tx_label"]
    for u in range(n_users):
        items = rng.choice(n_items, size=int(rng.integers(5, 9)), replace=False)
        for t, i in enumerate(items):
            label = 2 if t == len(items) - 1 else (1 if t == len(items) - 2 else 0)
            lines.append(f"{u}\t{i}\t5\t{100 + t}\t{label}")
    with open(os.path.join(src, f"{name}.inter"), "w") as f:
        f.write("\n".join(lines) + "\n")
    np.save(os.path.join(src, "image_feat.npy"), rng.standard_normal((n_items, 12)).astype(np.float32))
    np.save(os.path.join(src, "text_feat.npy"), rng.standard_normal((n_items, 6)).astype(np.float32))


@pytest.mark.parametrize("model", list(TINY_MODELS))
def test_prepared_custom_name_runs_every_model_by_name(tmp_path, in_tmp, model):
    write_mmrec_source(str(tmp_path / "src"), "mydata")
    out = str(tmp_path / "dataset")
    convert_mmrec(str(tmp_path / "src"), "mydata", out, show_progress=False, log=lambda *a: None)
    assert os.path.isfile(os.path.join(out, "mydata", "mydata.yaml"))
    config = tiny_run_config(tmp_path, data_path=out, **TINY_MODELS[model])  # no feature declaration here
    result = run_recbole_mm(model, "mydata", config_dict=config, saved=False)  # IDAgnosticMMSR: its feature mode
    assert all(0.0 <= v <= 1.0 for v in result["test_result"].values())


def test_hand_laid_mmrec_layout_is_discovered_and_aligned(tmp_path, in_tmp):
    info = write_tiny_dataset(str(tmp_path / "data"), name="handmade", with_ids=True)  # rows permuted
    assert not os.path.exists(os.path.join(info["folder"], "handmade.yaml"))
    config = Config("MuSTRec", "handmade", parse_argv=False,
                    config_dict=tiny_run_config(tmp_path, data_path=info["data_path"]))
    assert config["multimodal_features"] == {"image": {"file": "image_feat.npy", "ids": "image_ids.txt"},
                                             "text": {"file": "text_feat.npy", "ids": "text_ids.txt"}}
    dataset = create_dataset(config)
    tokens = dataset.field2id_token[dataset.iid_field]
    for m_index, modality in enumerate(info["dims"]):  # write_tiny_dataset's declaration order
        expected = np.stack([feature_value(m_index, int(t), info["dims"][modality]) for t in tokens[1:]])
        assert np.array_equal(dataset.item_features[modality][1:].numpy(), expected)
    result = run_recbole_mm("MuSTRec", "handmade", saved=False, config_dict=tiny_run_config(
        tmp_path, data_path=info["data_path"], **TINY_MODELS["MuSTRec"]))
    assert all(0.0 <= v <= 1.0 for v in result["test_result"].values())


def test_folder_yaml_sits_between_packaged_yaml_and_user_config(tmp_path, in_tmp):
    info = write_tiny_dataset(str(tmp_path / "data"), name="baby", dims={"text": 6})  # baby: packaged yaml
    base = dict(checkpoint_dir=str(tmp_path / "saved"), data_path=info["data_path"], state="ERROR")

    def config(**extra):
        return Config("MuSTRec", "baby", parse_argv=False, config_dict={**base, **extra.pop("dict", {})},
                      config_file_list=extra.pop("files", None))

    packaged = config()
    assert set(packaged["multimodal_features"]) == {"image", "text"} and packaged["knn_k"] != 4
    with open(os.path.join(info["folder"], "baby.yaml"), "w") as f:
        f.write("multimodal_features: {text: {file: text_feat.npy}}\nknn_k: 4\nMAX_ITEM_LIST_LENGTH: 7\n")
    mine = config()
    assert mine["multimodal_features"] == {"text": {"file": "text_feat.npy"}}  # replaces the packaged one
    assert mine["knn_k"] == 4 and mine["MAX_ITEM_LIST_LENGTH"] == 7  # and beats the model yaml
    with open(tmp_path / "user.yaml", "w") as f:
        f.write("MAX_ITEM_LIST_LENGTH: 9\n")
    assert config(files=[str(tmp_path / "user.yaml")])["MAX_ITEM_LIST_LENGTH"] == 9
    assert config(files=[str(tmp_path / "user.yaml")], dict={"MAX_ITEM_LIST_LENGTH": 11})["MAX_ITEM_LIST_LENGTH"] == 11
    with open(os.path.join(info["folder"], "baby.yaml"), "w") as f:
        f.write("knn_k: [4\n")
    with pytest.raises(ConfigError, match="baby.yaml is not valid yaml"):
        config()
