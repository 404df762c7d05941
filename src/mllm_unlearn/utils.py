"""Small helpers shared by every layer: seeding, hashing, atomic writes, devices."""
from __future__ import annotations

import atexit
import hashlib
import json
import os
import random
import shutil
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
        os.replace(tmp, path)
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
        yield tmp
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
    """Destroy the process group (if any) before the interpreter exits. Left to static destructors,
    gloo's threads sometimes abort a process whose work is done ("terminate called without an active
    exception", SIGABRT), and the launcher then reports the whole run as failed."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def process_rank_and_count() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def is_main_process() -> bool:
    return process_rank_and_count()[0] == 0


def wait_for_everyone() -> None:
    if process_rank_and_count()[1] > 1:
        torch.distributed.barrier()


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
