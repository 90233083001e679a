"""Run a benchmark grid and report it: ``python run_benchmark.py`` (or ``python -m recbole_mm.benchmark``).

Run (the default command; resumable: finished cells are skipped, a rerun completes the grid):

    python run_benchmark.py --grid properties/benchmark/leaderboard.yaml --data_path ../data \\
        --out benchmarks/results/leaderboard.jsonl --workers 2
    python run_benchmark.py --models=MuSTRec,SASRec --datasets=ml-100k --seeds=2020,2021,2022 \\
        --config_files=properties/benchmark/protocol.yaml --out results/quick.jsonl

Every cell (model x dataset x seed) trains through run_recbole_mm in its own process; one JSON row
per finished cell (config, seed, every valid/test metric, best epoch, epochs run, wall/CPU time,
peak memory, per-user target ranks) is appended to --out (the ranks and the split tables in files
beside it, <out>.ranks/ and <out>.splits/, keep the results file small), and the cell's log goes to
<out folder>/logs/. Entries with a search space in the grid file are tuned first (exhaustive grid,
first seed, chosen on validation), then the other seeds rerun the chosen values.

Report (tables with mean ± sd, significance, figures, LaTeX; the page is generated, never typed):

    python run_benchmark.py report --grid properties/benchmark/leaderboard.yaml \\
        --results benchmarks/results/leaderboard.jsonl --out docs/results.md --figures docs/figures
"""
import argparse
import os
import sys

from recbole_mm.benchmark.grid import GridError


def _csv(text):
    return [part.strip() for part in text.split(",") if part.strip()] if text else []


def _seeds(text):
    try:
        return [int(s) for s in _csv(text)]
    except ValueError:
        raise GridError(f"--seeds takes integers separated by commas (e.g. 2020,2021,2022), got '{text}'.") from None


def run_parser():
    parser = argparse.ArgumentParser(prog="run_benchmark.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--grid", help="grid file (protocol, datasets, seeds, entries, search spaces)")
    parser.add_argument("--models", help="comma-separated entries (with --grid: a subset; without: model names)")
    parser.add_argument("--datasets", help="comma-separated datasets (with --grid: a subset)")
    parser.add_argument("--seeds", help="comma-separated seeds whose cells run (default: the grid's, "
                        "else 2020); with --grid, tuning trials still use the grid's first seed")
    parser.add_argument("--config_files", action="append", default=[],
                        help="protocol yaml file(s) for a grid given by --models (repeatable; "
                             "a space-separated list also works)")
    parser.add_argument("--data_path", action="append", default=[],
                        help="folder(s) holding <dataset>/ folders (repeatable); the first that has the "
                             "dataset wins, else ./dataset")
    parser.add_argument("--out", help="results JSONL (default benchmarks/results/<grid name>.jsonl)")
    parser.add_argument("--workers", type=int, default=1, help="cells run at once (default 1)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads per cell (default: grid's, else 1)")
    parser.add_argument("--executor", choices=["local", "ray"], default=None,
                        help="local processes (default) or Ray tasks (implied by --ray_address)")
    parser.add_argument("--ray_address", default=None,
                        help="Ray cluster to spread cells over ('auto' or HOST:PORT); --executor ray without "
                             "it starts a local Ray")
    parser.add_argument("--timeout", type=float, default=None, help="seconds after which a cell is killed")
    parser.add_argument("--keep_checkpoints", action="store_true", help="keep each cell's checkpoint folder")
    parser.add_argument("--dry_run", action="store_true", help="list the cells that would run, run nothing")
    return parser


def report_parser():
    parser = argparse.ArgumentParser(prog="run_benchmark.py report",
                                     description="Tables, significance and figures from a results file.")
    parser.add_argument("--grid", required=True, help="the grid file the results were run with")
    parser.add_argument("--results", required=True, help="results JSONL")
    parser.add_argument("--out", required=True, help="Markdown page to write (e.g. docs/results.md)")
    parser.add_argument("--figures", default=None, help="folder for PNG figures and the LaTeX table")
    parser.add_argument("--claims", default=None, help="yaml list of paper claims to check against the results")
    parser.add_argument("--intro", default=None, help="Markdown file placed under the title")
    parser.add_argument("--title", default="Results")
    parser.add_argument("--cost", default=None, help="also write the grid's cost table (CPU hours, memory) here")
    return parser


def build_grid(args):
    from recbole_mm.benchmark.grid import grid_from_models, load_grid, restrict

    # a value naming an existing file is one path (spaces allowed); otherwise RecBole's space-separated list
    config_files = [path for value in args.config_files
                    for path in ([value] if os.path.isfile(value) else value.split(" ")) if path]
    if args.grid:
        if config_files:
            raise GridError("--config_files goes with --models, not --grid (the grid file names its protocol).")
        grid = restrict(load_grid(args.grid), _csv(args.models), _csv(args.datasets), _seeds(args.seeds))
    else:
        if not args.models or not args.datasets:
            raise GridError("pass --grid=FILE, or --models and --datasets (with --config_files for the protocol).")
        grid = grid_from_models(_csv(args.models), _csv(args.datasets), _seeds(args.seeds) or [2020], config_files)
    return grid


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    from recbole_mm.cli import fail
    from recbole_mm.errors import RecBoleMMError

    try:
        if argv and argv[0] == "report":
            return _report(report_parser().parse_args(argv[1:]))
        if argv and argv[0] == "run":
            argv = argv[1:]
        return _run(run_parser().parse_args(argv))
    except RecBoleMMError as err:
        return fail(err)
    except KeyboardInterrupt:
        print("interrupted: finished cells are saved; rerun the same command to continue", file=sys.stderr)
        return 130


def _exit_on_sigterm(signum, frame):
    raise SystemExit(128 + signum)  # unwinds like Ctrl-C: running cells are killed, finished rows stay


def _run(args):
    import signal

    from recbole_mm.benchmark.runner import run_grid

    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    from recbole_mm.benchmark.store import ResultStore

    grid = build_grid(args)
    name = os.path.splitext(os.path.basename(args.grid))[0] if args.grid else "benchmark"
    out = args.out or os.path.join("benchmarks", "results", f"{name}.jsonl")
    executor = args.executor or ("ray" if args.ray_address else "local")
    store = ResultStore(out)
    n_ok, n_failed = run_grid(grid, store, os.path.dirname(store.path), workers=max(1, args.workers),
                              threads=args.threads or grid.threads, data_paths=args.data_path, executor=executor,
                              ray_address=args.ray_address, timeout=args.timeout,
                              keep_checkpoints=args.keep_checkpoints, dry_run=args.dry_run)
    print(f"{n_ok} cell(s) finished, {n_failed} failed; results in {store.path}")
    return 1 if n_failed else 0


def _report(args):
    import yaml

    from recbole_mm.benchmark.grid import load_grid
    from recbole_mm.benchmark.report import build_report, cost_report
    from recbole_mm.benchmark.store import ResultStore

    if not os.path.isfile(args.results):
        raise GridError(f"results file not found: {args.results}. Fix: run the grid first or pass --results=FILE.")
    claims = None
    if args.claims:
        with open(args.claims, encoding="utf-8") as handle:
            claims = yaml.safe_load(handle) or []
    intro = ""
    if args.intro:
        with open(args.intro, encoding="utf-8") as handle:
            intro = handle.read()
    grid, store = load_grid(args.grid), ResultStore(args.results)
    build_report(grid, store, args.out, figure_dir=args.figures, title=args.title, intro=intro, claims=claims)
    if args.cost:
        cost_report(grid, store, args.cost)
    print(f"wrote {args.out}" + (f" and figures in {args.figures}" if args.figures and os.path.isdir(args.figures) else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
