"""The grid file and the cells it expands to.

A grid file (yaml; ``properties/benchmark/leaderboard.yaml`` is the project's leaderboard)::

    protocol: [protocol.yaml]          # config files every cell reads (relative to this file)
    seeds: [2020, 2021, 2022]
    datasets:                          # name: config keys for that dataset only
      scientific: {}
      ml-100k: {tuned_on: scientific}  # reuse scientific's choices instead of searching here
      babyscale: {tuned_on: scientific, seeds: [2020], epochs: 10}   # its own seeds; a fixed budget
    entries:                           # one table row each, in this order
      SASRec:
        baseline: true
        search:                        # exhaustive grid on validation, first seed only
          learning_rate: [0.001, 0.003]
          hidden_dropout_prob,attn_dropout_prob: [0.2, 0.5]   # one value set on both keys
      MuSTRec-B:
        model: MuSTRec                 # default: the entry's name
        config: {variant: B}
        tune_from: MuSTRec             # use MuSTRec's tuned values, no search of its own
        table: ablation
        result_split: test             # valid: tables show the selection split (protocols that select on test)

Cells: an entry with ``search`` runs every configuration of its grid with the first seed
(``role: trial``); the best one on the validation metric is that seed's result, and the other
seeds run with the chosen values (``role: final``). ``tune_from`` entries wait for the named
entry's choice, then run every seed. Other entries run every seed with their ``config``.
``--seeds`` limits which seeds' cells run; the trials stay on the grid's first seed (they run
first if missing), so ``--seeds 2021`` adds one seed's cells to a grid without re-tuning.
Config precedence inside a cell: protocol files < dataset keys < entry ``config`` < tuned values
< seed and paths.
"""
import hashlib
import itertools
import json
import os
from dataclasses import dataclass, field

import yaml

from recbole_mm.errors import RecBoleMMError

# Keys that locate files on one machine: never part of a cell's identity.
MACHINE_KEYS = ("data_path", "checkpoint_dir", "mm_feature_path", "graph_cache_dir", "dataset_save_path",
                "dataloaders_save_path")
ENTRY_KEYS = {"model", "config", "baseline", "search", "tune_from", "table", "datasets", "note", "result_split"}
GRID_KEYS = {"description", "protocol", "seeds", "datasets", "entries", "threads"}


class GridError(RecBoleMMError):
    """A malformed grid file or grid request; the message names the file or flag and the fix."""


@dataclass
class Entry:
    """One row of the result tables: a model with fixed keys and, optionally, a search space."""

    name: str
    model: str
    config: dict = field(default_factory=dict)
    baseline: bool = False
    search: dict = None  # {"key" or "key1,key2": [values]}; exhaustive grid
    tune_from: str = None
    table: str = "main"
    datasets: list = None  # None = every dataset of the grid
    note: str = ""
    result_split: str = "test"  # valid: report the selection split (a protocol that selects on its test part)

    def search_grid(self):
        """Every configuration of the search space, in file order (last key varies fastest)."""
        if not self.search:
            return []
        names = list(self.search)
        configurations = []
        for values in itertools.product(*(self.search[n] for n in names)):
            params = {}
            for joined, value in zip(names, values):
                for key in joined.split(","):
                    params[key.strip()] = value
            configurations.append(params)
        return configurations


@dataclass
class Grid:
    """A parsed grid: protocol files (absolute), seeds, datasets, entries (ordered)."""

    protocol_files: list
    seeds: list
    datasets: dict
    entries: dict
    description: str = ""
    path: str = None
    threads: int = 1
    tuned_on: dict = field(default_factory=dict)  # {dataset: dataset whose tuning choices it reuses}
    dataset_seeds: dict = field(default_factory=dict)  # {dataset: seeds} where a dataset has its own
    only_seeds: list = None  # --seeds on a grid file: run these seeds' cells, tune as the grid says

    def seeds_for(self, dataset):
        """The dataset's seeds as the grid file gives them; the first is the tuning seed."""
        return self.dataset_seeds.get(dataset, self.seeds)

    def run_seeds(self, dataset):
        """The seeds whose final cells this run executes (``--seeds`` where given)."""
        return list(self.only_seeds) if self.only_seeds else self.seeds_for(dataset)

    def entries_for(self, dataset):
        return [e for e in self.entries.values() if e.datasets is None or dataset in e.datasets]

    def fixed_budget(self, dataset):
        """The epoch count a dataset sets for itself (its runs stop there, not by patience), else None."""
        return self.datasets.get(dataset, {}).get("epochs")

    def search_budget(self):
        """{entry name: number of configurations searched} for entries with a search space."""
        return {e.name: len(e.search_grid()) for e in self.entries.values() if e.search}


@dataclass
class Cell:
    """One training run: an entry on a dataset with one seed and fixed configuration."""

    entry: str
    model: str
    dataset: str
    seed: int
    role: str  # trial | final
    params: dict
    config_files: list
    config_dict: dict

    @property
    def key(self):
        """Identity of the run: what it trains on and with, not where files lie."""
        protocol = [_file_sha1(path) for path in self.config_files]
        config = {k: v for k, v in self.config_dict.items() if k not in MACHINE_KEYS}
        payload = json.dumps({"entry": self.entry, "model": self.model, "dataset": self.dataset, "seed": self.seed,
                              "config": config, "protocol": protocol}, sort_keys=True, default=str)
        return hashlib.sha1(payload.encode()).hexdigest()[:16]

    @property
    def cell_id(self):
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in f"{self.entry}__{self.dataset}")
        return f"{safe}__s{self.seed}__{self.key[:10]}"

    def describe(self):
        params = ",".join(f"{k}={v}" for k, v in self.params.items())
        return f"{self.entry} on {self.dataset} seed {self.seed} ({self.role}{': ' + params if params else ''})"


def _file_sha1(path):
    with open(path, "rb") as handle:
        return hashlib.sha1(handle.read()).hexdigest()


def _expect(condition, message):
    if not condition:
        raise GridError(message)


def _parse_entry(name, spec, where):
    _expect(isinstance(spec, dict) or spec is None, f"{where}: entry '{name}' must be a mapping of "
            f"{sorted(ENTRY_KEYS)}, got {spec!r}.")
    spec = dict(spec or {})
    unknown = set(spec) - ENTRY_KEYS
    _expect(not unknown, f"{where}: entry '{name}' has unknown field(s) {sorted(unknown)}. "
            f"Fix: use {sorted(ENTRY_KEYS)}; config keys go under 'config:'.")
    config = spec.get("config") or {}
    _expect(isinstance(config, dict), f"{where}: 'config' of entry '{name}' must be a mapping of config keys.")
    search = spec.get("search")
    if search is not None:
        _expect(isinstance(search, dict) and search, f"{where}: 'search' of entry '{name}' must map keys to "
                "lists of values, e.g. {learning_rate: [0.001, 0.003]}.")
        for key, values in search.items():
            _expect(isinstance(values, list) and values, f"{where}: search values of '{key}' in entry '{name}' "
                    "must be a non-empty list.")
    _expect(not (search and spec.get("tune_from")), f"{where}: entry '{name}' has both 'search' and "
            "'tune_from'. Fix: keep one.")
    datasets = spec.get("datasets")
    _expect(datasets is None or isinstance(datasets, list), f"{where}: 'datasets' of entry '{name}' must be a list.")
    return Entry(name=str(name), model=str(spec.get("model") or name), config=config,
                 baseline=bool(spec.get("baseline", False)), search=search, tune_from=spec.get("tune_from"),
                 table=str(spec.get("table") or "main"), datasets=datasets, note=str(spec.get("note") or ""),
                 result_split=_result_split(spec.get("result_split"), name, where))


def _result_split(value, name, where):
    value = value or "test"
    _expect(value in ("test", "valid"), f"{where}: 'result_split' of entry '{name}' must be test or valid, got {value!r}.")
    return value


def load_grid(path):
    """Read and check a grid file; returns a :class:`Grid` with absolute protocol paths."""
    _expect(os.path.isfile(path), f"grid file not found: {path}. Fix: pass --grid=FILE (e.g. "
            "properties/benchmark/leaderboard.yaml) or --models/--datasets/--config_files.")
    with open(path, encoding="utf-8") as handle:
        try:
            spec = yaml.safe_load(handle) or {}
        except yaml.YAMLError as err:
            raise GridError(f"grid file {path} is not valid yaml: {err}") from None
    _expect(isinstance(spec, dict), f"grid file {path} must hold a mapping.")
    unknown = set(spec) - GRID_KEYS
    _expect(not unknown, f"grid file {path}: unknown field(s) {sorted(unknown)}. Fix: use {sorted(GRID_KEYS)}.")
    folder = os.path.dirname(os.path.abspath(path))
    protocol = spec.get("protocol") or []
    protocol = [protocol] if isinstance(protocol, str) else protocol
    protocol_files = [p if os.path.isabs(p) else os.path.join(folder, p) for p in protocol]
    for file in protocol_files:
        _expect(os.path.isfile(file), f"grid file {path}: protocol file {file} not found.")
    seeds = spec.get("seeds") or [2020]
    _expect(isinstance(seeds, list) and all(isinstance(s, int) for s in seeds),
            f"grid file {path}: 'seeds' must be a list of integers.")
    datasets = spec.get("datasets") or {}
    if isinstance(datasets, list):
        datasets = {name: {} for name in datasets}
    _expect(isinstance(datasets, dict) and datasets, f"grid file {path}: 'datasets' must name at least one dataset.")
    entries_spec = spec.get("entries") or {}
    _expect(isinstance(entries_spec, dict) and entries_spec, f"grid file {path}: 'entries' must name at least one model.")
    entries = {str(name): _parse_entry(name, entry, path) for name, entry in entries_spec.items()}
    for entry in entries.values():
        if entry.tune_from is not None:
            source = entries.get(entry.tune_from)
            _expect(source is not None and source.search, f"grid file {path}: entry '{entry.name}' tunes from "
                    f"'{entry.tune_from}', which is not an entry with a search space.")
    datasets = {str(k): dict(v or {}) for k, v in datasets.items()}
    tuned_on = {name: keys.pop("tuned_on") for name, keys in datasets.items() if "tuned_on" in keys}
    dataset_seeds = {name: keys.pop("seeds") for name, keys in datasets.items() if "seeds" in keys}
    for name, own in dataset_seeds.items():
        _expect(isinstance(own, list) and own and all(isinstance(s, int) for s in own),
                f"grid file {path}: 'seeds' of dataset '{name}' must be a list of integers.")
    for name, source in tuned_on.items():
        _expect(source in datasets and source not in tuned_on and list(datasets).index(source) < list(datasets).index(name),
                f"grid file {path}: dataset '{name}' is tuned on '{source}', which must be a dataset listed before it "
                "that does its own search.")
    return Grid(protocol_files=protocol_files, seeds=seeds, datasets=datasets, entries=entries,
                description=str(spec.get("description") or ""), path=os.path.abspath(path),
                threads=int(spec.get("threads") or 1), tuned_on=tuned_on, dataset_seeds=dataset_seeds)


def grid_from_models(models, datasets, seeds, config_files):
    """The grid of ``--models/--datasets/--seeds/--config_files`` with no grid file: every model
    with its defaults plus the config files, no search."""
    for file in config_files:
        _expect(os.path.isfile(file), f"config file not found: {file}. Fix: pass existing yaml files to --config_files.")
    return Grid(protocol_files=[os.path.abspath(f) for f in config_files], seeds=list(seeds),
                datasets={name: {} for name in datasets},
                entries={name: Entry(name=name, model=name) for name in models})


def restrict(grid, entries=None, datasets=None, seeds=None):
    """The same grid limited to some entries, datasets or seeds (names checked). Entries that
    tune from a dropped entry keep their source, since they need its choice."""
    if entries:
        missing = [e for e in entries if e not in grid.entries]
        _expect(not missing, f"--models names {missing} not in the grid; it has {list(grid.entries)}.")
        keep = set(entries) | {grid.entries[e].tune_from for e in entries if grid.entries[e].tune_from}
        grid.entries = {k: v for k, v in grid.entries.items() if k in keep}
    if datasets:
        missing = [d for d in datasets if d not in grid.datasets]
        _expect(not missing, f"--datasets names {missing} not in the grid; it has {list(grid.datasets)}.")
        keep = set(datasets) | {grid.tuned_on[d] for d in datasets if d in grid.tuned_on}
        grid.datasets = {k: v for k, v in grid.datasets.items() if k in keep}
    if seeds:
        # Only the final cells follow --seeds: tuning trials keep the grid's first seed, so a run
        # of one later seed reuses (or first runs) the same trials as the full grid.
        grid.only_seeds = list(seeds)
    return grid


def make_cell(grid, entry, dataset, seed, role, params, machine):
    """The cell of ``entry`` on ``dataset`` with ``seed`` and tuned ``params``; ``machine`` holds
    the absolute paths for this run (data_path per dataset, checkpoint folder)."""
    config = {**grid.datasets[dataset], **entry.config, **params, "seed": seed}
    config.update(machine.get(dataset, {}))
    return Cell(entry=entry.name, model=entry.model, dataset=dataset, seed=seed, role=role, params=dict(params),
                config_files=list(grid.protocol_files), config_dict=config)
