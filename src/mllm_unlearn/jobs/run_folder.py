"""A run folder (``RUNS_DIR/NAME``) that changes as one unit.

A run holds a lock on its name (``RUNS_DIR/.NAME.lock``, ``fcntl.flock``): a second run with the
same name fails at once. A first run writes in place, so a stopped one leaves what it measured
where the user looks (results.json says ``"complete": false``). A rerun writes its edit,
results.json, reports and certificate into a staging folder beside it
(``RUNS_DIR/.NAME.staging-PID``) and swaps it in when it ends (one ``renameat2(RENAME_EXCHANGE)``
where the file system has it, else two renames that the next run completes): killed at any point,
the folder holds the old complete run or the new complete one. results.json records the content
hash of the edit its figures belong to; ``export``, ``attack`` and ``report`` refuse a folder whose
edit is another (``check_edit_matches``)."""
from __future__ import annotations

import ctypes
import errno
import fcntl
import json
import os
import shutil
import sys
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from ..utils import broadcast_from_main, directory_digest, is_main_process, umask_mode
from .results import RESULTS_FILE, write_results

EDIT_DIR = "edit"
STAGING_MARK = ".staging"  # in a staging folder until its swap: a stale one holds a stopped run's output
# What a run folder may hold: a folder holding none of these (and not empty) is not replaced.
RUN_ENTRIES = ("results.json", EDIT_DIR, "edit-last-good")


def check_run_name(name: str, option: str = "--name") -> str:
    """``name`` if it is one path component (a folder directly under the runs folder), else a
    ValueError saying why: no separators, not ``.``/``..``, not empty, no NUL."""
    reason = None
    if not isinstance(name, str) or not name:
        reason = "is empty"
    elif "\0" in name:
        reason = "holds a NUL character"
    elif "/" in name or (os.sep != "/" and os.sep in name) or (os.altsep and os.altsep in name):
        reason = "holds a path separator"
    elif name in (".", ".."):
        reason = "names the runs folder or its parent"
    elif name.startswith("."):
        reason = "starts with '.' (names starting with '.' are the tool's staging and lock files)"
    if reason:
        raise ValueError(f"{option} {name!r} {reason}: it must be one folder name under --runs-dir "
                         "(e.g. ga-lr3e-4)")
    return name


class RunFolderBusy(ValueError):
    """Another run holds the lock on this run folder."""


def edit_digest(edit_dir: str | Path) -> str:
    """The content hash of a saved edit (every file's relative path and bytes)."""
    return directory_digest(edit_dir)


def results_complete(folder: Path) -> bool:
    """Whether ``folder`` holds a finished run: a readable results.json not marked incomplete
    (results.json of runs before 0.3 carry no mark and count as finished)."""
    try:
        results = json.loads((folder / RESULTS_FILE).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(results, dict) and results.get("complete", True) is True


def check_edit_matches(run_dir: str | Path, results: dict[str, Any], command: str) -> None:
    """Refuse a run folder whose ``edit/`` is not the edit its results.json measured (a rerun
    stopped by an older version, a hand change): ``command`` names who refuses."""
    run_dir = Path(run_dir)
    recorded = (results.get("edit") or {}).get("sha256") if isinstance(results.get("edit"), dict) else None
    if recorded is None:
        return  # written before the hash was recorded: nothing to compare
    edit_dir = run_dir / EDIT_DIR
    found = edit_digest(edit_dir) if edit_dir.is_dir() else None
    if found != recorded:
        raise ValueError(f"{command}: {edit_dir} is not the edit {run_dir / RESULTS_FILE} measured (sha256 "
                         f"{recorded[:12]} recorded, {found[:12] if found else 'no edit'} found): the folder was "
                         "changed after the run; run it again, or pass the edit you mean with --edit")


@contextmanager
def folder_lock(runs_dir: Path, name: str) -> Iterator[None]:
    """Hold ``RUNS_DIR/.NAME.lock`` for the block (the kernel drops it when the process dies)."""
    path = runs_dir / f".{name}.lock"
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, umask_mode())
    except OSError as error:
        raise OSError(error.errno, f"cannot create the run's lock file ({error.strerror})", str(path)) from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            raise RunFolderBusy(f"{runs_dir / name} is being written by another run (process {holder}, lock "
                                f"{path}): wait for it to end or choose another --name") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock


def run_folder_lock(run_dir: str | Path) -> Any:
    """``folder_lock`` of an existing run folder given by its path (``attack``, ``sequence --undo``)."""
    if not Path(run_dir).is_dir():
        raise FileNotFoundError(f"{run_dir} does not exist (expected a run folder holding results.json)")
    run_dir = Path(run_dir).resolve()
    return folder_lock(run_dir.parent, run_dir.name)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically (Linux ``renameat2(RENAME_EXCHANGE)``); False where unsupported."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False
    raise OSError(code, os.strerror(code), str(a), None, str(b))


@dataclass
class RunFolder:
    """Where a run writes (``work``) and where it ends up (``final``)."""

    runs_dir: Path
    name: str
    work: Path = field(init=False)
    staged: bool = field(init=False, default=False)
    committed: bool = field(init=False, default=False)

    def __post_init__(self) -> None:
        self.work = self.final

    @property
    def final(self) -> Path:
        return self.runs_dir / self.name

    def _siblings(self, kind: str) -> list[Path]:
        return sorted(self.runs_dir.glob(f".{self.name}.{kind}-*"))

    def prepare(self) -> None:
        """Under the lock: finish a swap a stopped run left halfway, drop replaced runs, name
        stopped reruns' output, and choose where this run writes."""
        final = self.final
        old = self._siblings("old")
        if not final.exists() and old:  # stopped between the two renames of a swap: the old run back
            os.replace(old.pop(), final)
        for path in old:
            shutil.rmtree(path, ignore_errors=True)
        for path in self._siblings("staging"):
            if (path / STAGING_MARK).exists():
                print(f"note: {path} holds what a stopped run of {self.name!r} wrote (not swapped in); "
                      "delete it once you no longer need it", file=sys.stderr)
            else:  # a replaced run the swap had not deleted yet
                shutil.rmtree(path, ignore_errors=True)
        if final.exists() and not final.is_dir():
            raise ValueError(f"{final} exists and is not a folder: choose another --name or --runs-dir")
        if final.is_dir():
            entries = {p.name for p in final.iterdir()}
            if entries and not entries & set(RUN_ENTRIES):
                raise ValueError(f"{final} exists and is not a run folder (no results.json or edit/): a run would "
                                 "replace it; choose another --name or --runs-dir")
            self.work = self.runs_dir / f".{self.name}.staging-{os.getpid()}"
            shutil.rmtree(self.work, ignore_errors=True)
            self.work.mkdir(mode=umask_mode(directory=True))
            (self.work / STAGING_MARK).write_text(f"a rerun of {self.name}; swapped into {final} when it ends\n")
            self.staged = True
        else:
            final.mkdir(mode=umask_mode(directory=True))

    def commit(self, results: dict[str, Any] | None = None) -> None:
        """Mark ``results`` complete (results.json rewritten) and put the folder in place."""
        if results is not None:
            results["complete"] = True
            write_results(self.work, results, reports=False)
        if self.staged:
            self._swap_in()
        self.committed = True

    def _swap_in(self) -> None:
        final, work = self.final, self.work
        (work / STAGING_MARK).unlink(missing_ok=True)
        if not final.exists():
            os.replace(work, final)
        elif _exchange(work, final):
            shutil.rmtree(work, ignore_errors=True)  # the previous run, now at the staging path
        else:  # two renames; a run stopped between them is completed by the next run's prepare()
            old = self.runs_dir / f".{self.name}.old-{os.getpid()}"
            os.replace(final, old)
            os.replace(work, final)
            shutil.rmtree(old, ignore_errors=True)
        self.work = final

    def abandon(self) -> Path | None:
        """After a failure: a first run's partial folder stays in place (emptied ones removed); a
        rerun's output replaces the old folder only if that held no finished run, else it stays
        in the staging folder. Returns where the partial output is (None: nothing written)."""
        written = [p for p in self.work.iterdir() if p.name != STAGING_MARK] if self.work.is_dir() else []
        if not written:
            shutil.rmtree(self.work, ignore_errors=True)
            return None
        if self.staged and not results_complete(self.final):
            self._swap_in()
        return self.work

    def partial_location(self) -> Path:
        """Where this run's output stays if it fails now (named in its error messages)."""
        return self.final if not self.staged or not results_complete(self.final) else self.work


@contextmanager
def open_run_folder(runs_dir: str | Path, name: str) -> Iterator[RunFolder]:
    """The run folder ``RUNS_DIR/NAME``, locked for the block (checked before any work: the name,
    that RUNS_DIR is writable, that no other run holds it). The block writes into ``folder.work``
    and calls ``folder.commit(results)`` when it is done; if it raises first, ``abandon`` keeps
    what it wrote (see there). Under several processes the main one holds the folder; the others
    get the same paths and write nothing."""
    name = check_run_name(name)
    runs_dir = Path(runs_dir)
    folder = RunFolder(runs_dir, name)
    if not is_main_process():
        work, error = broadcast_from_main(None)
        if error:
            raise ValueError(error)
        folder.work = Path(work)
        yield folder
        return
    sent = False
    try:
        runs_dir.mkdir(parents=True, exist_ok=True)
        if not os.access(runs_dir, os.W_OK | os.X_OK):
            raise PermissionError(errno.EACCES, "the runs folder is not writable", str(runs_dir))
        with folder_lock(runs_dir, name):
            folder.prepare()
            broadcast_from_main((str(folder.work), None))
            sent = True
            try:
                yield folder
            except BaseException:
                if not folder.committed:
                    kept = folder.abandon()
                    if kept is not None and kept != folder.final:
                        print(f"note: the run stopped; {folder.final} still holds the previous finished run, and "
                              f"what this run wrote is in {kept}", file=sys.stderr)
                raise
    except (ValueError, OSError) as error:
        if not sent:  # the other processes stop too
            broadcast_from_main((None, str(error)))
        raise
