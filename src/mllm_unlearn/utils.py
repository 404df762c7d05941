"""Small helpers shared by every layer: seeding, hashing, atomic writes, devices."""
from __future__ import annotations

import atexit
import gc
import hashlib
import json
import math
import os
import random
import shutil
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def stable_hash(obj: Any, length: int = 12) -> str:
    """Hash of a JSON-serialisable object, stable across runs and machines."""
    text = json.dumps(obj, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def current_umask() -> int:
    """The process's umask, read without changing it where Linux reports it (``/proc/self/status``)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)  # elsewhere: set and restore (not thread-safe, but nothing here runs threads then)
    os.umask(mask)
    return mask


def umask_mode(directory: bool = False) -> int:
    """The mode ``open``/``mkdir`` would give a new file (0o666) or folder (0o777) under the umask:
    ``mkstemp``/``mkdtemp`` create theirs 0600/0700, which colleagues and a web server cannot read."""
    return (0o777 if directory else 0o666) & ~current_umask()


def check_training_numbers(owner: str, **values: Any) -> None:
    """Training settings that must make sense before any work: ``lr`` a finite number > 0,
    ``epochs``/``batch_size`` whole numbers >= 1, ``max_steps`` None or a whole number >= 1.
    The ValueError names ``owner.field`` (``option_message`` turns it into the option)."""
    for field, value in values.items():
        if field == "max_steps" and value is None:
            continue
        if field == "lr":
            number = isinstance(value, (int, float)) and not isinstance(value, bool)
            if not number or not math.isfinite(value) or value <= 0:
                raise ValueError(f"{owner}.lr must be a finite number > 0, got {value!r}")
        elif not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{owner}.{field} must be a whole number >= 1"
                             f"{' (or unset)' if field == 'max_steps' else ''}, got {value!r}")


def check_writable_folder(path: str | Path, option: str) -> None:
    """The folder ``path`` (or, while it does not exist, its nearest existing parent) accepts new
    files, checked before any work: otherwise a ValueError naming ``option``."""
    path = Path(path)
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise ValueError(f"{option} {path}: {existing} is not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"{option} {path}: {existing} is not writable (permissions or a read-only file system)")


def file_sha256(path: str | Path) -> str:
    """sha256 of one file's bytes, read in blocks (a 7B checkpoint never sits in memory whole)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def directory_digest(path: str | Path) -> str:
    """sha256 over a folder's files: each relative path and its bytes, in sorted order."""
    root = Path(path)
    digest = hashlib.sha256()
    for file in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(file.relative_to(root).as_posix().encode() + b"\0")
        with open(file, "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
        digest.update(b"\0")
    return digest.hexdigest()


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write to a temporary name, then rename, so a crash never leaves a half file."""
    atomic_write_bytes(path, text.encode())


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.chmod(tmp, umask_mode())
        os.replace(tmp, path)
    except OSError as error:  # a full disk, say: the error names the file (the old one is intact)
        Path(tmp).unlink(missing_ok=True)
        raise OSError(error.errno, error.strerror or str(error), str(path)) from error
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextmanager
def atomic_directory(path: str | Path) -> Iterator[Path]:
    """Yield a temporary directory that becomes ``path`` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.tmp-"))
    try:
        os.chmod(tmp, umask_mode(directory=True))
        yield tmp
        # What the block wrote gets the umask's modes too: some writers (safetensors) create 0600 files.
        for inner in tmp.rglob("*"):
            if not inner.is_symlink():
                os.chmod(inner, umask_mode(directory=inner.is_dir()))
        # Move an old version aside (one atomic rename) rather than deleting it in place, so a
        # concurrent reader or writer never sees a half-deleted directory under ``path``.
        old = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.old-"))
        try:
            for attempt in range(5):
                if path.exists():
                    try:
                        os.replace(path, old / f"previous-{attempt}")
                    except FileNotFoundError:  # another writer moved it first
                        pass
                try:
                    os.replace(tmp, path)
                    break
                except OSError:  # another writer installed its version in between: go again
                    if attempt == 4:
                        raise
        finally:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@contextmanager
def cpu_threads(count: int) -> Iterator[None]:
    """torch's intra-op CPU threads set to ``count`` for the block, then restored."""
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def resolve_device(device: str = "auto") -> torch.device:
    if device == "auto":
        if not torch.cuda.is_available():
            return torch.device("cpu")
        # Under accelerate launch each process takes its own GPU.
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")) % torch.cuda.device_count())
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {device!r} was asked for, but CUDA is not available on this machine")
    try:
        return torch.device(device)
    except RuntimeError:
        raise ValueError(f"--device must be auto, cpu, cuda or cuda:N, got {device!r}") from None


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_dtype(dtype: str) -> torch.dtype:
    if dtype not in DTYPES:
        raise ValueError(f"--dtype must be one of {sorted(DTYPES)} or auto, got {dtype!r}")
    return DTYPES[dtype]


def dtype_name(dtype: torch.dtype) -> str:
    """"bfloat16" for torch.bfloat16 (the names --dtype takes)."""
    return {v: k for k, v in DTYPES.items()}[dtype]


def peak_memory_mb(device: torch.device) -> float:
    """Peak memory of this process: CUDA allocator peak on GPU, max RSS on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# --- several processes (``accelerate launch``) ---------------------------------------------
def init_distributed(cpu: bool) -> None:
    """Join the process group when launched by ``accelerate launch``/torchrun (no-op otherwise).

    ``cpu`` must match what the training loop's ``Accelerator`` is given: accelerate's shared
    state is set once, and a state made for GPUs on a CPU run would leave data unsharded."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        from accelerate import PartialState

        PartialState(cpu=cpu)
        atexit.unregister(leave_process_group)  # once, however often a process calls this
        atexit.register(leave_process_group)


def leave_process_group() -> None:
    """Leave the process group (if any) while the interpreter is still whole (registered at exit).

    A collective's work holds its tensors; when a gloo worker thread drops the last one after the
    interpreter began finalizing, releasing the tensor's Python object asks for the GIL, the thread
    is made to exit inside a ``noexcept`` destructor and the process aborts ("terminate called
    without an active exception", SIGABRT) after its work is done, failing the launched run. So,
    in order: every process reaches this point and every earlier collective on the group has
    completed (a barrier, then the device); what took part in collectives (a sharded copy's FSDP
    state, DTensors, optimizer state, kept alive only by reference cycles) is collected; then the
    group is destroyed and its threads joined, before finalization. A process leaving on an
    uncaught error skips the barrier (the others may never arrive)."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return
    if not hasattr(sys, "last_value"):  # set when an uncaught exception ends the process
        torch.distributed.barrier()
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            torch.cuda.synchronize()
    gc.collect()
    torch.distributed.destroy_process_group()
    gc.collect()


def process_rank_and_count() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def is_main_process() -> bool:
    return process_rank_and_count()[0] == 0


def wait_for_everyone() -> None:
    if process_rank_and_count()[1] > 1:
        torch.distributed.barrier()


def broadcast_from_main(value: Any) -> Any:
    """The main process's ``value`` in every process (the value itself in one process)."""
    if process_rank_and_count()[1] == 1:
        return value
    box = [value]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]


def shard_and_gather(items: list[Any], work: Any) -> list[Any]:
    """``work(items)`` with the items spread over the processes; every process gets all results, in order."""
    rank, count = process_rank_and_count()
    if count == 1:
        return list(work(items))
    mine = list(work(items[rank::count]))
    gathered: list[Any] = [None] * count
    torch.distributed.all_gather_object(gathered, mine)
    out: list[Any] = [None] * len(items)
    for source, results in enumerate(gathered):
        out[source::count] = results
    return out


def moved_names(old_module: str, moved: dict[str, str]) -> Callable[[str], Any]:
    """A module ``__getattr__`` for names that moved to other modules (``{name: "module"}``, or
    ``"module:new_name"`` for a renamed one): each access warns (DeprecationWarning naming the new
    place) and returns the name from its new module. The new module is imported on first access, so
    an old module low in the layers never imports a higher one while the package loads."""
    import importlib
    import warnings

    def __getattr__(name: str) -> Any:
        if name not in moved:
            raise AttributeError(f"module {old_module!r} has no attribute {name!r}")
        module, _, new_name = moved[name].partition(":")  # "module" or "module:new_name" (renamed)
        new_name = new_name or name
        warnings.warn(f"{old_module}.{name} moved to {module}.{new_name}; the old name goes in the next release",
                      DeprecationWarning, stacklevel=2)
        return getattr(importlib.import_module(module), new_name)

    return __getattr__
