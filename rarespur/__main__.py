"""``python -m rarespur <command>``: tools that work on a results directory."""
from __future__ import annotations

import argparse
import sys

from rarespur.collect import collect, write_table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rarespur", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p_collect = sub.add_parser("collect", help="merge all finished runs into runs.parquet and runs.csv")
    p_collect.add_argument("results_dir", help="the run store (results_dir of the jobs)")
    p_collect.add_argument("--out", help="folder for the table (default: the results directory)")
    args = parser.parse_args(argv)

    if args.command == "collect":
        table = collect(args.results_dir)
        if table.empty:
            print(f"no finished runs in {args.results_dir}", file=sys.stderr)
            return 1
        parquet, csv = write_table(table, args.out or args.results_dir)
        print(f"{len(table)} runs -> {parquet} and {csv}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
