"""What the two search drivers share: the ``.hyper`` search space and one trial.

:mod:`recbole_mm.tuning` (hyperopt, and :func:`~recbole_mm.tuning.run_search` for both tools) and
:mod:`recbole_mm.tuning_ray` (Ray Tune) both import this module; neither imports the other at
module level except ``tuning`` starting the Ray driver, so there is no import cycle.

The search space uses RecBole's ``.hyper`` format, one parameter a line::

    learning_rate loguniform -8,0        # exp(uniform(-8, 0))
    hidden_size choice [32,64]           # a Python literal list
    dropout_prob uniform 0.1,0.5
    n_layers quniform 1,3,1              # round(uniform(1, 3) / 1) * 1; integer bounds and step give ints
"""
import ast
import math
import os
import time
from dataclasses import dataclass, field

from recbole_mm.errors import RecBoleMMError

KINDS = ("choice", "uniform", "quniform", "loguniform")
EXAMPLE = "e.g. 'learning_rate loguniform -8,0' or 'hidden_size choice [32,64]'"


class SearchSpaceError(RecBoleMMError, ValueError):
    """A malformed search-space file; the message names the file, line and fix."""


class TuningError(RecBoleMMError, ValueError):
    """A search that cannot run as asked (tool, algorithm, resources); the message says the fix."""


@dataclass
class Param:
    """One line of a ``.hyper`` file."""

    name: str
    kind: str
    values: list = None  # choice
    low: float = None
    high: float = None
    q: float = None  # quniform step

    def integer_steps(self):
        return self.kind == "quniform" and all(float(v).is_integer() for v in (self.low, self.high, self.q))


# ------------------------------------------------------------------ search space
def parse_search_space(path):
    """Read a RecBole ``.hyper`` file into a list of :class:`Param`; blank lines and ``#``
    comments are skipped, anything else malformed raises :class:`SearchSpaceError`."""
    if not os.path.isfile(path):
        raise SearchSpaceError(f"search-space file not found: {path}. Fix: pass --params_file=FILE "
                               f"with one 'name type values' line per parameter ({EXAMPLE}).")
    params = []
    with open(path, encoding="utf-8") as handle:
        for number, raw in enumerate(handle, start=1):
            line = raw.split("#", 1)[0].strip()
            if line:
                params.append(_parse_line(line, f"{path}:{number}", {p.name for p in params}))
    if not params:
        raise SearchSpaceError(f"search-space file {path} defines no parameter. Fix: add lines like {EXAMPLE}.")
    return params


def _parse_line(line, where, seen):
    parts = line.split()
    if len(parts) < 3:
        raise SearchSpaceError(f"{where}: '{line}' needs three fields 'name type values'; {EXAMPLE}.")
    name, kind, value = parts[0], parts[1], "".join(parts[2:])
    if kind not in KINDS:
        raise SearchSpaceError(f"{where}: unknown type '{kind}' for '{name}'. Fix: use one of {', '.join(KINDS)}.")
    if name in seen:
        raise SearchSpaceError(f"{where}: parameter '{name}' is defined twice. Fix: keep one line per parameter.")
    if kind == "choice":
        try:
            values = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            values = None
        if not isinstance(values, (list, tuple)) or not values:
            raise SearchSpaceError(f"{where}: choice values of '{name}' must be a non-empty Python list such as "
                                   f"[32,64] or ['gelu','relu'], got '{value}'.")
        return Param(name, kind, values=list(values))
    numbers = value.split(",")
    wanted = 3 if kind == "quniform" else 2
    try:
        numbers = [float(n) for n in numbers]
    except ValueError:
        numbers = []
    if len(numbers) != wanted:
        form = "low,high,step" if kind == "quniform" else "low,high"
        raise SearchSpaceError(f"{where}: {kind} '{name}' takes {form} as numbers, got '{value}'.")
    low, high = numbers[0], numbers[1]
    if not low < high:
        raise SearchSpaceError(f"{where}: {kind} '{name}' needs low < high, got {low} and {high}.")
    if kind == "quniform" and numbers[2] <= 0:
        raise SearchSpaceError(f"{where}: quniform '{name}' needs a positive step, got {numbers[2]}.")
    return Param(name, kind, low=low, high=high, q=numbers[2] if kind == "quniform" else None)


def grid_size(params):
    """Number of configurations of an all-``choice`` space (exhaustive search)."""
    continuous = [p.name for p in params if p.kind != "choice"]
    if continuous:
        raise SearchSpaceError(f"exhaustive search needs only 'choice' parameters; {', '.join(continuous)} "
                               "are continuous. Fix: use --algo random or tpe, or make them choices.")
    return math.prod(len(p.values) for p in params)


def hyperopt_space(params):
    from hyperopt import hp

    space = {}
    for p in params:
        if p.kind == "choice":
            space[p.name] = hp.choice(p.name, p.values)
        elif p.kind == "uniform":
            space[p.name] = hp.uniform(p.name, p.low, p.high)
        elif p.kind == "quniform":
            space[p.name] = hp.quniform(p.name, p.low, p.high, p.q)
        else:
            space[p.name] = hp.loguniform(p.name, p.low, p.high)
    return space


def clean_params(params, sampled):
    """Plain Python values for the config: numpy scalars become int/float, integer quniform → int."""
    cleaned = {}
    for p in params:
        value = sampled[p.name]
        if hasattr(value, "item"):
            value = value.item()
        if p.integer_steps():
            value = int(round(value))
        cleaned[p.name] = value
    return cleaned


# ------------------------------------------------------------------ one trial
@dataclass
class TrialSetup:
    """Everything a trial needs, with absolute paths (trials may run in another folder)."""

    model: str
    dataset: str
    config_file_list: list
    config_dict: dict
    output_dir: str
    saved: bool = True
    extra: dict = field(default_factory=dict)


def run_trial(setup, params, trial_id):
    """Train and evaluate one configuration; returns a result record (never raises)."""
    from recbole_mm.quick_start import objective_function

    config_dict = {**setup.config_dict, **params, "model": setup.model, "dataset": setup.dataset}
    # one folder per trial: concurrent trials would otherwise share time-stamped file names
    config_dict["checkpoint_dir"] = os.path.join(setup.config_dict["checkpoint_dir"], str(trial_id))
    start = time.time()
    record = {"trial": trial_id, "params": params}
    try:
        result = objective_function(config_dict=config_dict, config_file_list=setup.config_file_list,
                                    saved=setup.saved)
    except Exception as err:  # noqa: BLE001 - a failed trial is recorded, the search goes on
        record.update(status="failed", error=f"{type(err).__name__}: {err}", seconds=time.time() - start)
        return record
    record.update(status="ok", error=None, seconds=round(time.time() - start, 2),
                  valid_score=float(result["best_valid_score"]),
                  valid={k: float(v) for k, v in (result["best_valid_result"] or {}).items()},
                  test={k: float(v) for k, v in (result["test_result"] or {}).items()})
    return record
