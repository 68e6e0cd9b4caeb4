"""Train the `demo` model version's weights (see embedding/demo/weights/MODEL_CARD.md).

Usage:
  python jobs/train_demo_model.py                         # the shipped weights (~13 min, 2 CPU cores)
  python jobs/train_demo_model.py --steps 3 --out /tmp/x  # a smoke run, a few seconds
"""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import sys
from pathlib import Path

# Before torch loads OpenMP: idle threads sleep instead of spinning. With the default (spinning) policy a
# second busy process on a 2-core machine made each training step about 10x slower; with this, 2-3x.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, help="output folder (default embedding/demo/weights)")
    parser.add_argument("--seed", type=int, default=None, help="training seed")
    parser.add_argument("--steps", type=int, default=None, help="optimizer steps (the schedule's length)")
    parser.add_argument("--minutes", type=float, default=None, help="wall-time cap on the whole run")
    parser.add_argument("--batch-size", type=int, default=None, help="images per step, at most 48")
    parser.add_argument("--pool-size", type=int, default=None, help="distinct training images")
    parser.add_argument("--lr", type=float, default=None, help="peak learning rate")
    parser.add_argument("--workers", type=int, default=None, help="processes rendering training images")
    parser.add_argument("--no-quality", action="store_true", help="skip the quality measurement")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("embedding").setLevel(logging.INFO)  # our progress, not open_clip's chatter
    # Imported here so that --help is instant and render workers (spawned) do not import torch twice.
    from embedding.demo.train import TrainConfig, train

    overrides = {
        "out": args.out,
        "seed": args.seed,
        "steps": args.steps,
        "minutes": args.minutes,
        "batch_size": args.batch_size,
        "pool_size": args.pool_size,
        "lr": args.lr,
        "workers": args.workers,
    }
    config = TrainConfig(**{k: v for k, v in overrides.items() if v is not None})
    config.measure_quality = not args.no_quality
    command = "python jobs/train_demo_model.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    config.extra["command"] = command.strip()
    meta = train(config)
    print(
        f"wrote {Path(config.out) / 'demo.safetensors'} ({meta['steps']} steps, {meta['total_minutes']} min)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
