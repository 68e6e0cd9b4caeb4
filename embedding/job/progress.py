"""Progress of a run where Ray Data's bars are not shown (not a terminal, or the standalone executor): a
line on stderr every few seconds with the units committed, the vectors written and their rate."""

from __future__ import annotations

import sys
import time

from embedding.job.commit import Committer

PROGRESS_EVERY_S = 5.0


class Progress:
    """A line on stderr every few seconds: units committed, vectors, vectors/s (when there are no bars)."""

    def __init__(self, committer: Committer, quiet: bool = False):
        self.committer, self.quiet = committer, quiet
        self.total = len(committer.todo)
        self.started = self.last = time.monotonic()

    def tick(self) -> None:
        now = time.monotonic()
        if self.quiet or now - self.last < PROGRESS_EVERY_S:
            return
        done = self.total - len(self.committer.todo)
        rows = self.committer.totals.embedded + self.committer.totals.frames
        rate = rows / (now - self.started)
        print(f"progress: {done}/{self.total} units committed, {rows} vectors, {rate:.1f}/s", file=sys.stderr)
        sys.stderr.flush()
        self.last = now
