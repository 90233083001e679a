"""Every user mistake is one ``error:`` line with exit code 2, never a traceback.

Two halves: a walk over every ``raise`` in recbole_mm/ (each raised class must derive from
RecBoleMMError, the class the entry points catch, unless it is listed below as an internal
invariant), and the command line itself, one representative case per family of mistakes.
"""
import ast
import builtins
import importlib
import os
import subprocess
import sys

import pytest
import yaml

from conftest import REPO_ROOT, write_tiny_dataset
from recbole_mm.errors import ConfigError, RecBoleMMError, run_entry_point

# (module, enclosing function, raised name) of raises that are not about user input: a failure
# there is a bug, an interpreter protocol, or an internal signal caught before it reaches a user.
INTERNAL_RAISES = {
    ("recbole_mm", "__getattr__", "AttributeError"): "module attribute protocol",
    ("recbole_mm.utils", "atomic_write", "FileExistsError"): "100 random temp names all taken",
    ("recbole_mm.utils", "write_sealed", "ValueError"): "caller passed a fingerprint with spaces",
    ("recbole_mm.utils", "read_sealed", "SealBroken"): "caught by every cache: rebuilt with a warning",
    ("recbole_mm.utils", "read_sealed", "SealStale"): "caught by every cache: rebuilt",
    ("recbole_mm.graphs.cache", "_load", "SealBroken"): "caught in cached_tensor: rebuilt with a warning",
    ("recbole_mm.graphs.normalize", "sym_normalize", "ValueError"): "shape invariant of the graph toolkit",
    ("recbole_mm.graphs.normalize", "weighted_sum", "ValueError"): "shape invariant of the graph toolkit",
    ("recbole_mm.graphs.interaction", "edge_list", "TypeError"): "argument type of the graph toolkit",
    ("recbole_mm.graphs.knn", "_valid_mask", "ValueError"): "shape invariant of the graph toolkit",
    ("recbole_mm.graphs.knn", "knn_graph", "ValueError"): "shape / option invariants of the graph toolkit",
    ("recbole_mm.graphs.knn", "topk_cosine", "ValueError"): "shape invariant of the graph toolkit",
    ("recbole_mm.graphs.cooccurrence", "cooccurrence_matrix", "ValueError"): "item ids from RecBole's remapping",
    ("recbole_mm.data.leakage", "check_training_graph", "ValueError"): "leakage invariant: a bug if it fails",
    ("recbole_mm.data.leakage", "check_eval_histories", "ValueError"): "leakage invariant: a bug if it fails",
    ("recbole_mm.model.mustrec", "set_stage", "ValueError"): "called by MuSTRecTrainer with fixed stages",
    ("recbole_mm.model.layers.encoders", "hook", "_StopForward"): "control flow, caught in the same method",
    ("recbole_mm.model.layers.encoders", "n_items", "NotImplementedError"): "abstract method",
    ("recbole_mm.model.layers.encoders", "raw_inputs", "NotImplementedError"): "abstract method",
    ("recbole_mm.model.layers.encoders", "run", "NotImplementedError"): "abstract method",
    ("recbole_mm.checks", "require_cross_entropy", "error_class"): "the caller's ConfigError subclass",
    ("recbole_mm.checks", "select_modalities", "error_class"): "the caller's ConfigError subclass",
    ("recbole_mm.tuning", "run_search", "AllTrialsFailed"): "exit code 1 by design (run_hyper prints it)",
    ("recbole_mm.launcher", "_worker", "SystemExit"): "child exits after handing its error to the parent",
    ("recbole_mm.benchmark.__main__", "_exit_on_sigterm", "SystemExit"): "SIGTERM unwinds the runner like Ctrl-C",
}


def raises_in(module_name, path):
    """(enclosing function, raised name) of every ``raise X`` / ``raise X(...)`` in a file."""
    tree = ast.parse(open(path, encoding="utf-8").read())
    found = []

    def visit(node, function):
        for child in ast.iter_child_nodes(node):
            inner = child.name if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)) else function
            if isinstance(child, ast.Raise) and child.exc is not None:
                exc = child.exc.func if isinstance(child.exc, ast.Call) else child.exc
                name = exc.id if isinstance(exc, ast.Name) else ast.unparse(exc)
                found.append((inner, name, child.lineno))
            visit(child, inner)

    visit(tree, "<module>")
    return found


def all_module_files():
    for folder, _, files in os.walk(os.path.join(REPO_ROOT, "recbole_mm")):
        for file in sorted(files):
            if file.endswith(".py"):
                parts = os.path.relpath(os.path.join(folder, file), REPO_ROOT)[:-3].split(os.sep)
                yield ".".join(parts[:-1] if parts[-1] == "__init__" else parts), os.path.join(folder, file)


def test_every_raise_in_recbole_mm_is_a_user_error_or_a_listed_internal_one():
    leaks, unused = [], set(INTERNAL_RAISES)
    for module_name, path in all_module_files():
        module = None
        for function, name, line in raises_in(module_name, path):
            if (module_name, function, name) in INTERNAL_RAISES:
                unused.discard((module_name, function, name))
                continue
            module = module or importlib.import_module(module_name)
            cls = getattr(module, name, None) or getattr(builtins, name, None)
            if name in ("err", "error"):  # re-raising a caught exception
                continue
            if not (isinstance(cls, type) and issubclass(cls, RecBoleMMError)):
                leaks.append(f"{os.path.relpath(path, REPO_ROOT)}:{line} {function}() raises {name}")
    assert not leaks, ("raises that would print a traceback for user input; raise a RecBoleMMError "
                       "subclass, or list an internal invariant in INTERNAL_RAISES:\n" + "\n".join(leaks))
    assert not unused, f"INTERNAL_RAISES entries that match no raise any more: {sorted(unused)}"


def test_run_entry_point_reports_one_line_and_exit_code_2(capsys):
    def broken():
        raise ConfigError("config key 'x' is wrong.\nFix: set it right.")

    assert run_entry_point(broken) == 2
    assert capsys.readouterr().err == "error: config key 'x' is wrong. Fix: set it right.\n"
    assert run_entry_point(lambda: 3) == 3 and run_entry_point(lambda: {"a": 1}) == 0
    with pytest.raises(ZeroDivisionError):  # a bug keeps its traceback
        run_entry_point(lambda: 1 / 0)


# ----------------------------------------------------------------------------- command line
SMALL = ["--epochs=1", "--state=ERROR", "--show_progress=False", "--train_batch_size=256",
         "--MAX_ITEM_LIST_LENGTH=10", "--log_wandb=False"]


@pytest.fixture
def cli_data(tmp_path):
    """A tiny dataset with text + image features and a yaml declaring them."""
    info = write_tiny_dataset(str(tmp_path / "data"), n_users=40, n_items=50)
    config_file = tmp_path / "tiny.yaml"
    config_file.write_text(yaml.safe_dump({"multimodal_features": info["features"],
                                           "data_path": info["data_path"],
                                           "checkpoint_dir": str(tmp_path / "saved")}))
    return {"info": info, "yaml": str(config_file), "root": tmp_path}


def run_cli_subprocess(script, args, cwd):
    return subprocess.run([sys.executable, os.path.join(REPO_ROOT, script), *args], cwd=cwd,
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": REPO_ROOT, "OMP_NUM_THREADS": "1"})


def assert_one_error_line(returncode, stderr, pattern):
    assert returncode == 2, stderr[-3000:]
    assert "Traceback" not in stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr[-3000:]
    assert pattern in lines[0], lines[0]


@pytest.mark.parametrize("family,args,pattern", [
    ("unknown key", ["--model=SASRec", "--learnig_rate=0.5"], "Did you mean learning_rate?"),
    ("model key", ["--model=MuSTRec", "--variant=XYZ", "--embedding_size=8", "--hidden_size=8"],
     "unknown variant 'XYZ'"),
    ("dataset too small for top-k", ["--model=SASRec", "--topk=[10,100]", "--valid_metric=NDCG@10"],
     "has 50 items after filtering"),
    ("unwritable folder", ["--model=SASRec", "--checkpoint_dir={yaml}/saved"], "config key 'checkpoint_dir'"),
])
def test_runner_families_give_one_error_line(cli_data, family, args, pattern):
    args = [a.replace("{yaml}", cli_data["yaml"]) for a in args]
    result = run_cli_subprocess("run_recbole_mm.py", ["--dataset=tiny", f"--config_files={cli_data['yaml']}",
                                                      *SMALL, *args], cli_data["root"])
    assert_one_error_line(result.returncode, result.stderr, pattern)


def test_run_hyper_stops_on_a_misspelt_search_key_before_any_trial(cli_data):
    space = cli_data["root"] / "space.hyper"
    space.write_text("learnig_rate loguniform -8,0\n")
    output = cli_data["root"] / "results.json"
    result = run_cli_subprocess("run_hyper.py", ["--model=SASRec", "--dataset=tiny", f"--params_file={space}",
                                                 f"--config_files={cli_data['yaml']}", f"--output_file={output}",
                                                 "--max_evals=2", "--epochs=1"], cli_data["root"])
    assert_one_error_line(result.returncode, result.stderr, "Did you mean learning_rate?")
    assert str(space) in result.stderr and not output.exists()  # no trial ran


@pytest.mark.parametrize("args,pattern", [
    (["--model=SASRec", "--epochs=1", "--epochs=2"], "--epochs is given twice"),
    (["--model=SASRec", "--valid_metric=NDCG@50"], "'topk' is [10, 20]"),
    (["--model=SASRec", "--seed=abc"], "config key 'seed' must be an integer"),
    (["--model=SASRec", "--epochs", "5"], "passed as --key=value"),
    (["--model=SASRec", "--metrics=['Hit','Foo']"], "There is no metric named 'Foo'"),
    (["--model=SASRec", "--valid_metric=Recall@10"], "config key 'metrics'"),
    (["--model=SASRec", "--loss_type=CE", "--train_neg_sample_args={'distribution':'uniform'}"],
     "should be None when the loss_type is CE"),
    (["--model=SASRec", "--resume=nowhere.pth"], "config key 'resume'"),
    (["--model=MuSTRec", "--variant=V", "--image_weight=0.5", "--embedding_size=8", "--hidden_size=8"],
     "remove one of them"),
    (["--model=MuSTRec", "--embedding_size=8", "--hidden_size=16"], "embedding_size"),
    (["--model=MDSRec", "--modalities=[audio]", "--embedding_size=8", "--n_centers=2"], "audio"),
    (["--model=IDAgnosticMMSR", "--item_source=raw"], "item_text_file"),
    (["--model=SASRec", "--data_path={root}/nowhere"], "dataset 'tiny' not found"),
])
def test_runner_user_errors_in_process(cli_data, monkeypatch, capsys, args, pattern):
    """The same contract for the other cases, through the runner's main() (cheaper than a process)."""
    import run_recbole_mm

    args = [a.replace("{root}", str(cli_data["root"])) for a in args]
    argv = ["--dataset=tiny", f"--config_files={cli_data['yaml']}", *SMALL, *args]
    monkeypatch.chdir(cli_data["root"])
    monkeypatch.setattr(sys, "argv", ["run_recbole_mm.py", *argv])
    code = run_recbole_mm.main(argv)
    assert_one_error_line(code, capsys.readouterr().err, pattern)


def test_text_timestamps_are_named_with_file_column_and_line(cli_data, monkeypatch, capsys):
    import run_recbole_mm

    inter = os.path.join(cli_data["info"]["folder"], "tiny.inter")
    lines = open(inter).read().splitlines()
    lines[5] = lines[5].rsplit("\t", 1)[0] + "\tyesterday"
    open(inter, "w").write("\n".join(lines) + "\n")
    argv = ["--dataset=tiny", f"--config_files={cli_data['yaml']}", *SMALL, "--model=SASRec"]
    monkeypatch.chdir(cli_data["root"])
    monkeypatch.setattr(sys, "argv", ["run_recbole_mm.py", *argv])
    code = run_recbole_mm.main(argv)
    assert_one_error_line(code, capsys.readouterr().err, "column 'timestamp' is declared float but line 6 holds "
                                                         "'yesterday'")


def test_log_wandb_without_wandb_is_refused_before_training(cli_data, monkeypatch, capsys):
    import importlib.util

    import run_recbole_mm

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else
                        real_find_spec(name, *a))
    argv = ["--dataset=tiny", f"--config_files={cli_data['yaml']}", *SMALL[:-1], "--model=SASRec", "--log_wandb=True"]
    monkeypatch.chdir(cli_data["root"])
    monkeypatch.setattr(sys, "argv", ["run_recbole_mm.py", *argv])
    assert_one_error_line(run_recbole_mm.main(argv), capsys.readouterr().err, "recbole_mm[wandb]")
    assert not (cli_data["root"] / "saved").exists()  # stopped before anything was written
