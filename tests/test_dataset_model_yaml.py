"""The dataset+model config layer: properties/dataset/<dataset>/<Model>.yaml (recbole_mm/config.py).

It applies to that model on that dataset only, after the model's and the dataset's yaml and before
anything the user passes; every key in it carries a comment.
"""
import glob
import os

import pytest
import yaml

from conftest import write_tiny_dataset
from recbole_mm import registry
from recbole_mm.config import PROPERTIES_DIR, Config, config_yaml_files, dataset_model_yaml

LAYER_FILES = sorted(glob.glob(os.path.join(PROPERTIES_DIR, "dataset", "*", "*.yaml")))


def settings(tmp_path, **overrides):
    return {"checkpoint_dir": str(tmp_path / "saved"), "log_wandb": False, **overrides}


def config(model, dataset, tmp_path, **overrides):
    return Config(model=model, dataset=dataset, parse_argv=False, config_dict=settings(tmp_path, **overrides))


def test_ml100k_layer_sets_mdsrec_cpu_sizes_only_there(tmp_path):
    demo = config("MDSRec", "ml-100k", tmp_path)
    assert (demo["embedding_size"], demo["inner_size"], demo["n_centers"]) == (64, 128, 8)
    assert demo["MAX_ITEM_LIST_LENGTH"] == 10
    info = write_tiny_dataset(str(tmp_path / "data"))
    other = config("MDSRec", info["name"], tmp_path, data_path=info["data_path"])
    assert (other["embedding_size"], other["inner_size"], other["n_centers"]) == (300, 256, 32)  # paper values
    assert other["MAX_ITEM_LIST_LENGTH"] == 50


def test_layer_of_one_model_does_not_reach_another_model(tmp_path):
    mdsrec_keys = yaml.safe_load(open(dataset_model_yaml("ml-100k", "MDSRec")))
    assert "n_centers" in mdsrec_keys
    sasrec = config("SASRec", "ml-100k", tmp_path)
    assert sasrec["n_centers"] is None and sasrec["inner_size"] == 256  # RecBole's SASRec default
    assert sasrec["MAX_ITEM_LIST_LENGTH"] == 20  # SASRec's own demo layer: the same length as the others
    assert config("SASRec", "ml-100k", tmp_path, dataset_model_defaults=False)["MAX_ITEM_LIST_LENGTH"] == 50
    mustrec = config("MuSTRec", "ml-100k", tmp_path)
    assert mustrec["embedding_size"] == 64 and mustrec["n_centers"] is None


def test_user_values_override_the_layer(tmp_path, monkeypatch):
    assert config("MDSRec", "ml-100k", tmp_path, embedding_size=32, n_centers=4)["embedding_size"] == 32
    monkeypatch.setattr("sys.argv", ["run_recbole_mm.py", "--n_centers=5"])
    cmd = Config(model="MDSRec", dataset="ml-100k", parse_argv=True, config_dict=settings(tmp_path))
    assert cmd["n_centers"] == 5 and cmd["embedding_size"] == 64


def test_switch_off_gives_the_model_defaults_on_ml100k(tmp_path, monkeypatch):
    off = config("MDSRec", "ml-100k", tmp_path, dataset_model_defaults=False)
    assert (off["embedding_size"], off["inner_size"], off["n_centers"], off["MAX_ITEM_LIST_LENGTH"]) == (300, 256, 32, 50)
    monkeypatch.setattr("sys.argv", ["run_recbole_mm.py", "--dataset_model_defaults=False"])
    cmd = Config(model="MMSR", dataset="ml-100k", parse_argv=True, config_dict=settings(tmp_path))
    assert cmd["MAX_ITEM_LIST_LENGTH"] == 50 and cmd["embedding_size"] == 128


def test_benchmark_cells_run_without_the_layer(tmp_path):
    # A grid's protocol alone decides: the runner turns the layer off unless an entry sets it.
    from types import SimpleNamespace
    from recbole_mm.benchmark.runner import cell_spec
    cell = SimpleNamespace(model="MDSRec", dataset="ml-100k", config_files=[], config_dict={"epochs": 1})
    spec = cell_spec(cell, threads=1)
    assert config("MDSRec", "ml-100k", tmp_path, **spec["config_dict"])["n_centers"] == 32
    cell.config_dict = {"dataset_model_defaults": True}
    assert config("MDSRec", "ml-100k", tmp_path, **cell_spec(cell, 1)["config_dict"])["n_centers"] == 8


def test_idagnostic_demo_uses_frozen_features(tmp_path):
    demo = config("IDAgnosticMMSR", "ml-100k", tmp_path)
    assert demo["item_source"] == "features" and demo["embedding_size"] % demo["fusion_heads"] == 0
    info = write_tiny_dataset(str(tmp_path / "data"))
    assert config("IDAgnosticMMSR", info["name"], tmp_path, data_path=info["data_path"])["item_source"] == "auto"


@pytest.mark.parametrize("path", LAYER_FILES, ids=lambda p: os.path.relpath(p, PROPERTIES_DIR))
def test_layer_files_name_a_model_and_comment_every_key(path):
    registry.get_model(os.path.splitext(os.path.basename(path))[0])  # raises for an unknown model
    assert os.path.isfile(os.path.join(PROPERTIES_DIR, "dataset", os.path.basename(os.path.dirname(path)) + ".yaml"))
    assert path in config_yaml_files()  # its keys are checked like every other yaml's
    for line in open(path):
        if line.strip() and not line.startswith((" ", "#")):
            assert "#" in line, f"{path}: key without a comment: {line.strip()}"
