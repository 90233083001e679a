"""Config keys: a typo is an error with the closest known key, wherever it is written."""
import glob
import os
import re
import sys

import pytest
import yaml

from conftest import REPO_ROOT, tiny_run_config
from recbole_mm import config as config_module
from recbole_mm.cli import config_file_list
from recbole_mm.config import Config, ConfigError, PROPERTIES_DIR, check_keys, config_yaml_files, known_keys


def make(tmp_path, config_dict=None, **kwargs):
    return Config(model=kwargs.pop("model", "SASRec"), dataset="ml-100k", parse_argv=kwargs.pop("parse_argv", False),
                  config_dict={**tiny_run_config(tmp_path), **(config_dict or {})}, **kwargs)


@pytest.mark.parametrize("key,close", [("learnig_rate", "learning_rate"), ("epoch", "epochs"), ("knn_kk", "knn_k")])
def test_misspelt_key_in_config_dict_names_the_closest_key(tmp_path, key, close):
    with pytest.raises(ConfigError, match=rf"unknown config key '{key}' \(config_dict\)\. Did you mean {close}\?"):
        make(tmp_path, {key: 3})


def test_misspelt_key_on_the_command_line_and_in_a_yaml_file(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["run_recbole_mm.py", "--learnig_rate=0.5"])
    with pytest.raises(ConfigError, match=r"'learnig_rate' \(command line\)\. Did you mean learning_rate"):
        make(tmp_path, parse_argv=True)
    folder = tmp_path / "my configs"  # a folder with a space, named in the message
    folder.mkdir()
    (folder / "protocol.yaml").write_text("stopping_stp: 3\n")
    with pytest.raises(ConfigError, match=r"'stopping_stp' \(.*my configs/protocol.yaml\)\. Did you mean stopping_step"):
        make(tmp_path, config_file_list=[str(folder / "protocol.yaml")])


def test_known_keys_pass_and_the_opt_out_accepts_extra_keys(tmp_path, monkeypatch):
    config = make(tmp_path, {"learning_rate": 0.01, "knn_k": 4, "hidden_size": 32})  # ours + RecBole's
    assert config["learning_rate"] == 0.01
    config = make(tmp_path, {"my_note": "run 7", "allow_unknown_keys": True})
    assert config["my_note"] == "run 7"
    monkeypatch.setattr(sys, "argv", ["run_recbole_mm.py", "--my_note=x", "--allow_unknown_keys=True"])
    assert make(tmp_path, parse_argv=True)["my_note"] == "x"
    with pytest.raises(ConfigError, match="allow_unknown_keys' must be true or false"):
        make(tmp_path, {"allow_unknown_keys": "yes"})


def test_model_yaml_keys_are_known_only_for_that_model(tmp_path):
    assert "n_layers" in known_keys("SASRec")  # RecBole's SASRec.yaml
    assert "pooling_mode" in known_keys("FDSA") and "pooling_mode" not in known_keys("SASRec")
    with pytest.raises(ConfigError, match="unknown config key 'pooling_mode'"):
        make(tmp_path, {"pooling_mode": "mean"})


def test_renamed_key_names_the_new_key_even_with_the_opt_out(tmp_path, monkeypatch):
    monkeypatch.setitem(config_module.RENAMED_KEYS, "old_width", "embedding_size")
    for extra in ({}, {"allow_unknown_keys": True}):
        with pytest.raises(ConfigError, match="'old_width' .*was renamed to 'embedding_size'"):
            make(tmp_path, {"old_width": 8, **extra})


def test_renamed_keys_are_no_longer_defaults():
    ours = set()
    for path in config_yaml_files():
        ours |= set(yaml.safe_load(open(path)) or {})
    assert not ours & set(config_module.RENAMED_KEYS)


def test_overall_yaml_documents_the_opt_out():
    text = open(os.path.join(PROPERTIES_DIR, "overall.yaml")).read()
    for key in ("allow_unknown_keys", "resume", "save_last_state"):
        assert re.search(rf"^{key}: .+# .+", text, re.M), key


def test_every_key_recbole_mm_reads_is_known():
    """Keys the code reads (config["x"]) are declared in a yaml file or are RecBole's / internal."""
    internal = {"MODEL_TYPE", "device", "single_spec", "mm_data_root", "eval_type", "valid_metric_bigger",
                "MODEL_INPUT_TYPE"}
    patterns = [r'config\[\s*"([A-Za-z_0-9]+)"\s*\]', r'_get\(\s*config,\s*"([A-Za-z_0-9]+)"', r'"([A-Za-z_0-9]+)" in config\b']
    read = set()
    for path in glob.glob(os.path.join(REPO_ROOT, "recbole_mm", "**", "*.py"), recursive=True):
        text = open(path, encoding="utf-8").read()
        for pattern in patterns:
            read |= set(re.findall(pattern, text))
    assert read - internal <= known_keys(), sorted(read - internal - known_keys())


def test_every_key_recbole_reads_outside_its_yaml_is_known():
    """EXTRA_KNOWN_KEYS covers what RecBole 1.2.1's code reads (data, trainers, evaluation)."""
    import recbole

    root = os.path.dirname(recbole.__file__)
    internal = {"MODEL_TYPE", "MODEL_INPUT_TYPE", "device", "eval_type", "single_spec"}
    read = set()
    for path in glob.glob(os.path.join(root, "**", "*.py"), recursive=True):
        if os.sep + "model" + os.sep in path:  # model keys live in each model's yaml
            continue
        read |= set(re.findall(r'config\[\s*["\']([A-Za-z_0-9]+)["\']\s*\]', open(path, encoding="utf-8").read()))
    assert read - internal <= known_keys(), sorted(read - internal - known_keys())


def test_check_keys_without_a_close_match():
    with pytest.raises(ConfigError, match=r"unknown config key 'zzzzqqq' \(x.hyper\)\. Fix"):
        check_keys(["zzzzqqq"], "SASRec", "x.hyper")


# ----------------------------------------------------------------------------- argv and files
def test_duplicate_argument_with_different_values_and_values_with_equals(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["run_recbole_mm.py", "--epochs=2", "--epochs=3"])
    with pytest.raises(ConfigError, match="--epochs is given twice with different values"):
        make(tmp_path, parse_argv=True)
    monkeypatch.setattr(sys, "argv", ["run_recbole_mm.py", "--epochs=2", "--epochs=2",
                                      "--config_files=a.yaml", "--config_files=b.yaml", "--nproc=1"])
    config = make(tmp_path, parse_argv=True)  # same value twice is fine; runner flags are not config keys
    assert config["epochs"] == 2 and "config_files" not in config.final_config_dict
    monkeypatch.setattr(sys, "argv", ["run_recbole_mm.py", "--checkpoint_dir=" + str(tmp_path / "a=b")])
    assert make(tmp_path, parse_argv=True)["checkpoint_dir"] == str(tmp_path / "a=b")  # RecBole dropped it


def test_config_files_with_spaces_repeated_or_as_a_yaml_list(tmp_path):
    folder = tmp_path / "my protocol"
    folder.mkdir()
    first, second = folder / "a.yaml", tmp_path / "b.yaml"
    first.write_text("eval_step: 4\n")
    second.write_text("stopping_step: 2\n")
    assert config_file_list([str(first)]) == [str(first)]  # an existing path, spaces and all
    assert config_file_list([str(first), str(second)]) == [str(first), str(second)]  # flag repeated
    assert config_file_list([f"['{first}', {second}]"]) == [str(first), str(second)]  # yaml list
    assert config_file_list([f"{second} {second}"]) == [str(second), str(second)]  # RecBole's form
    assert config_file_list([f"'{first}' {second}"]) == [str(first), str(second)]  # shell quoting
    config = make(tmp_path, config_file_list=config_file_list([str(first), str(second)]))
    assert config["eval_step"] == 4 and config["stopping_step"] == 2
    with pytest.raises(ConfigError, match="not a yaml list of file names"):
        config_file_list(["[a.yaml, {b: 1}]"])


def test_checkpoint_dir_that_cannot_be_created_is_refused_without_creating_anything(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(ConfigError, match="config key 'checkpoint_dir': cannot create or write"):
        make(tmp_path, {"checkpoint_dir": str(blocker / "saved")})
    make(tmp_path, {"checkpoint_dir": str(tmp_path / "new" / "saved")})
    assert not (tmp_path / "new").exists()  # checked, not created
