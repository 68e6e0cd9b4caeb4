"""The driver of `embedding run`: start-up checks, the plan and the rows' fates, the executors (Ray Data or
standalone), the commit of units, overwrite, progress and the run record. It handles units, never rows."""
