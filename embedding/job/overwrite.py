"""`run.mode: overwrite`: the new output is built beside the old one and swapped in once it is complete.

The shadow partition lives under `<root>/_state/overwrite/<kind>-<version>-<run_id>/`. When every unit is
committed there, the swap:

1. writes `SWAP` in the shadow (atomically): the list of every file the new partition consists of (its part
   files, its markers and its identity). From here on the swap only goes forward.
2. moves each listed file that is still in the shadow to its place in the target (a rename on local disks,
   copy then delete on object stores: a file copied but not yet deleted is simply copied again);
3. deletes the target's files that are not listed (old units' part files and markers, old identity);
4. deletes the shadow.

Every step can be repeated, so a swap killed after any step is finished by the next run
(`recover_overwrites`, run under the lease) and the outputs are exactly those of an uninterrupted swap. A
shadow without `SWAP` belongs to an overwrite run that never completed and is deleted.
"""

from __future__ import annotations

import posixpath

from embedding.store import faults
from embedding.store.files import list_names, read_json, remove, write_json
from embedding.store.partition import Partition

SWAP = "SWAP"


def shadow_partition(target: Partition, run_id: str) -> Partition:
    """Where an overwrite run writes, beside the partition it will replace once everything is committed."""
    root = target.url(
        posixpath.join(target.base, "_state", "overwrite", f"{target.kind}-{target.version}-{run_id}")
    )
    return Partition(
        root=root, kind=target.kind, version=target.version, storage_options=target.storage_options
    )


def _relative_files(partition: Partition) -> list[str]:
    """The files that make a committed partition, relative to its root."""
    files = []
    for unit_id in sorted(partition.markers()):
        files += [
            posixpath.relpath(partition.part_path(t, unit_id), partition.base) for t in partition.tables
        ]
        files.append(posixpath.relpath(partition.marker_path(unit_id), partition.base))
    if partition.fs.exists(partition.identity_path):
        files.append(posixpath.relpath(partition.identity_path, partition.base))
    return files


def replace_with(target: Partition, shadow: Partition) -> None:
    """Swap a committed shadow partition in for the target (see the module docstring)."""
    swap = posixpath.join(shadow.base, SWAP)
    if read_json(shadow.fs, swap) is None:
        write_json(shadow.fs, swap, {"files": _relative_files(shadow)}, fault="swap.list")
    _finish(target, shadow)


def _finish(target: Partition, shadow: Partition) -> None:
    fs = target.fs
    swap = read_json(fs, posixpath.join(shadow.base, SWAP))
    assert swap is not None, "the swap list is written before any file moves"
    listed = swap["files"]
    for rel in listed:
        source, dest = posixpath.join(shadow.base, rel), posixpath.join(target.base, rel)
        if fs.exists(source):
            fs.makedirs(posixpath.dirname(dest), exist_ok=True)
            fs.mv(source, dest)
            faults.point("swap.after_move")
    keep = set(listed)
    folders = [*(target.table_dir(t) for t in target.all_tables), posixpath.join(target.state_dir, "commits")]
    for folder in folders:
        for name in list_names(fs, folder):
            path = posixpath.join(folder, name)
            if posixpath.relpath(path, target.base) not in keep:
                remove(fs, path)
    if posixpath.relpath(target.identity_path, target.base) not in keep:
        remove(fs, target.identity_path)
    faults.point("swap.before_cleanup")
    remove(fs, shadow.base, recursive=True)


def recover_overwrites(target: Partition) -> None:
    """Finish swaps that passed their SWAP mark; delete overwrite runs that never got there."""
    folder = posixpath.join(target.base, "_state", "overwrite")
    prefix = f"{target.kind}-{target.version}-"
    for name in list_names(target.fs, folder):
        if not name.startswith(prefix):
            continue
        shadow = shadow_partition(target, name[len(prefix) :])
        if read_json(target.fs, posixpath.join(shadow.base, SWAP)) is not None:
            _finish(target, shadow)
        else:
            remove(target.fs, shadow.base, recursive=True)
