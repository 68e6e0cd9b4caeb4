"""The `ray job submit` entry point of the index stage alone.

ray job submit --working-dir . -- python jobs/build_index.py --config configs/cluster-2022-04-11.yaml
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
    parser.add_argument("--verify", action="store_true")
    args = parser.parse_args()
    argv = ["index", args.config, *[f"--set={s}" for s in args.set]] + (["--verify"] if args.verify else [])
    return cli_main(argv)


if __name__ == "__main__":
    sys.exit(main())
