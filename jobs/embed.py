"""The `ray job submit` entry point of the embedding job.

    ray job submit --working-dir . -- python jobs/embed.py --config configs/cluster-2022-04-11.yaml

Parses its arguments, loads the config and calls the library; it has no logic of its own.
"""

from __future__ import annotations

import argparse
import sys

from embedding.cli import main as cli_main


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", required=True)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--retry-errors", action="store_true")
    parser.add_argument("--mode", choices=["resume", "overwrite"])
    args = parser.parse_args()
    argv = ["run", args.config, *[f"--set={s}" for s in args.set]]
    argv += ["--retry-errors"] if args.retry_errors else []
    argv += [f"--mode={args.mode}"] if args.mode else []
    return cli_main(argv)


if __name__ == "__main__":
    sys.exit(main())
