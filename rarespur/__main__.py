"""``python -m rarespur <command>``: tools that work on a results directory."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from rarespur.errors import UserError
from rarespur.launch.status import STALE_AFTER_S, WATCH_EVERY_S

# Each command imports what it needs when it runs: the experiments (and with them torch), pandas and Hydra
# take seconds to load, which --help and a mistyped command should not wait for.

STATUS_EPILOG = """\
Give the sweep exactly as it was launched: the same --sweep file(s) and the same overrides
(python run.py -m --config-dir sweeps --config-name NAME OVERRIDES  ->  --sweep NAME OVERRIDES).
Without --sweep and overrides, every run directory in RESULTS_DIR is reported.
States: done; running (its process is alive, or on another host its directory changed within
--stale-after seconds, or SLURM runs its array task); queued (its SLURM array task waits in the
queue: a relaunch does not submit it again); failed (error.txt); stale (abandoned: killed, preempted);
corrupt (done, but a file it vouches for is missing or damaged: a relaunch runs it again); missing
(no directory). --watch also shows models per hour and the ETA since the sweep was submitted."""


EXPORT_EPILOG = """\
Each run of the store becomes one tracking run, found again by its run key: its flattened config
(params / HParams), every epoch of history.json, the record's metrics and its figures and tables.
Runs already there, finished (logged live with logger=..., or exported before), are skipped.
Then: mlflow ui --backend-store-uri sqlite:///RESULTS_DIR/mlflow.db, or tensorboard --logdir LOGDIR."""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m rarespur", description=__doc__)
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error, not only its message")
    sub = parser.add_subparsers(dest="command", required=True)
    p_collect = sub.add_parser(
        "collect", help="merge all finished runs into runs.parquet / runs.csv, their epochs into epochs.parquet"
    )
    p_collect.add_argument("results_dir", help="the run store (results_dir of the jobs)")
    p_collect.add_argument("--out", help="folder for the table (default: the results directory)")

    p_report = sub.add_parser("report", help="draw the paper's figures and summary tables from the finished runs")
    p_report.add_argument("results_dir", help="the run store (results_dir of the jobs)")
    p_report.add_argument("--out", help="folder for index.md, the PNGs and the tables (default: RESULTS_DIR/report)")

    p_export = sub.add_parser(
        "export",
        help="replay every finished run into MLflow or TensorBoard (skips runs already there)",
        epilog=EXPORT_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p_export.add_argument("tracker", choices=("mlflow", "tensorboard"), help="where to export the runs")
    p_export.add_argument("results_dir", help="the run store (results_dir of the jobs)")
    p_export.add_argument(
        "--tracking-uri",
        help="mlflow: where to log (default: $MLFLOW_TRACKING_URI, else sqlite:///RESULTS_DIR/mlflow.db, as logger=mlflow)",
    )
    p_export.add_argument("--experiment-name", default="rarespur", help="mlflow: the experiment (default rarespur)")
    p_export.add_argument("--logdir", help="tensorboard: the log folder (default RESULTS_DIR/tensorboard)")

    p_status = sub.add_parser(
        "status",
        help="count done / running / failed / stale / missing jobs of a sweep",
        epilog=STATUS_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p_status.add_argument("results_dir", help="the run store (results_dir of the jobs)")
    p_status.add_argument("overrides", nargs="*", help="the sweep's Hydra overrides, as given to run.py -m")
    p_status.add_argument(
        "--sweep",
        action="append",
        default=[],
        help="sweep file: a name in sweeps/ or a path; repeat for a study of several files",
    )
    p_status.add_argument(
        "--by", default="", help="config keys to count by, comma-separated (e.g. dataset.name,optim.name)"
    )
    p_status.add_argument(
        "--stale-after",
        type=float,
        default=STALE_AFTER_S,
        metavar="SECONDS",
        help=f"a job on another host is stale after this long without a change (default {STALE_AFTER_S:.0f})",
    )
    p_status.add_argument(
        "--watch", action="store_true", help="refresh (every --every seconds) until nothing is queued or running"
    )
    p_status.add_argument(
        "--every",
        type=float,
        default=WATCH_EVERY_S,
        metavar="SECONDS",
        help=f"with --watch (default {WATCH_EVERY_S:.0f})",
    )
    p_status.add_argument(
        "--limit", type=int, default=20, help="list at most this many failed / stale runs each (0 = all)"
    )
    p_status.add_argument(
        "--delete-incomplete",
        action="store_true",
        help="delete the failed, stale and corrupt run directories (never done or running ones)",
    )
    return parser


def _run(args: argparse.Namespace, extras: list[str]) -> int:
    if args.command == "collect":
        from rarespur.experiments import clean_twin_baselined
        from rarespur.store.collect import EPOCHS_NAME, collect, collect_epochs, collect_tables, write_table

        table = collect(args.results_dir, clean_twin_baselined())
        if table.empty:
            print(f"no finished runs in {args.results_dir}", file=sys.stderr)
            return 1
        out = args.out or args.results_dir
        parquet, csv = write_table(table, out)
        print(f"{len(table)} runs -> {parquet} and {csv}")
        for name, rows in collect_tables(args.results_dir).items():
            parquet, _ = write_table(rows, out, name)
            print(f"{len(rows)} {name} rows -> {parquet}")
        epochs = collect_epochs(args.results_dir)
        parquet, _ = write_table(epochs, out, EPOCHS_NAME)
        print(f"{len(epochs)} epochs of {epochs['run_id'].nunique()} runs -> {parquet}")
    elif args.command == "export":
        from rarespur.tracking.export import export_store

        if args.tracker == "mlflow":
            settings = {"tracking_uri": args.tracking_uri, "experiment_name": args.experiment_name}
        else:
            settings = {"save_dir": args.logdir or str(Path(args.results_dir) / "tensorboard")}
        done = export_store(args.results_dir, args.tracker, settings)
        print(f"{done.added} runs exported to {args.tracker}, {done.present} were there already")
    elif args.command == "report":
        from rarespur.report import write_report  # matplotlib loads only for this command

        print(f"report -> {write_report(args.results_dir, args.out)}")
    elif args.command == "status":
        from rarespur.launch.status import report, watch
        from rarespur.launch.sweep import expand

        if args.watch and args.delete_incomplete:
            raise UserError("--watch and --delete-incomplete do not go together: delete once the sweep has ended")
        if args.every <= 0:
            raise UserError(f"--every {args.every:g}: give a positive number of seconds between refreshes")
        overrides = [*args.overrides, *extras]
        by = [key for key in args.by.split(",") if key]
        jobs = expand(args.sweep, overrides, args.results_dir) if args.sweep or overrides else None
        if args.watch:
            watch(args.results_dir, jobs, by, args.stale_after, args.limit, args.every)
        else:
            report(args.results_dir, jobs, by, args.stale_after, args.delete_incomplete, args.limit)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    # Hydra overrides may follow options (status DIR --sweep X a=1 b=2): argparse hands those back as extras.
    args, extras = parser.parse_known_args(argv)
    if (args.command != "status" and extras) or any(e.startswith("-") for e in extras):
        parser.error(f"unrecognized arguments: {' '.join(extras)}")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from hydra.errors import HydraException  # all of Hydra: not for --help

    try:
        return _run(args, extras)
    except (UserError, HydraException, FileNotFoundError, NotADirectoryError, PermissionError, ValueError) as err:
        # bad input (a missing folder, a bad override): the message says what to change
        if args.debug:
            raise
        print(f"error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
