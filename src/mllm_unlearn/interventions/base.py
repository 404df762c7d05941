"""Edits: what every method returns. Applied reversibly, saved and loaded, or baked in."""
from __future__ import annotations

import json
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any, ClassVar, Iterator

from ..utils import atomic_directory

EDIT_KINDS: dict[str, type["Edit"]] = {}


def register_edit(cls: type["Edit"]) -> type["Edit"]:
    EDIT_KINDS[cls.kind] = cls
    return cls


class EditHandle:
    """Returned by ``Edit.apply``; ``remove()`` restores the model exactly."""

    def __init__(self, undo: Any):
        self._undo = undo
        self.active = True

    def remove(self) -> None:
        if self.active:
            self._undo()
            self.active = False


class Edit:
    kind: ClassVar[str]
    bakeable: ClassVar[bool] = True  # False: the edit acts on activations and lives only as hooks
    meta: dict[str, Any]

    def apply(self, vlm: Any) -> EditHandle:
        raise NotImplementedError

    @contextmanager
    def applied(self, vlm: Any) -> Iterator[EditHandle]:
        handle = self.apply(vlm)
        try:
            yield handle
        finally:
            handle.remove()

    @contextmanager
    def for_task(self, task: str) -> Iterator[None]:
        """While inside, act as set for evaluation task ``task`` ("mcq", "cloze", "generation"...).
        Most edits act the same on every task; a steering edit may have a strength per task."""
        yield

    def bake(self, vlm: Any) -> None:
        """Make the edit permanent in the model's weights (for export as a normal checkpoint)."""
        self.apply(vlm)

    # --- persistence ------------------------------------------------------------------
    def save(self, path: str | Path) -> None:
        with atomic_directory(path) as tmp:
            self._save_payload(tmp)
            (tmp / "edit.json").write_text(json.dumps({"kind": self.kind, "meta": self.meta}, indent=2, default=str))

    def _save_payload(self, folder: Path) -> None:
        raise NotImplementedError

    @classmethod
    def _load_payload(cls, folder: Path, meta: dict[str, Any]) -> "Edit":
        raise NotImplementedError


def load_edit(path: str | Path) -> Edit:
    """The edit saved in ``path``; a damaged folder (edit.json that is not JSON, a truncated or
    malformed weights file, an index outside its tensor) is a ValueError naming the file."""
    folder = Path(path)
    header = folder / "edit.json"
    if not header.is_file():
        raise FileNotFoundError(f"{folder} is not a saved edit: {header} is missing")
    try:
        info = json.loads(header.read_text())
    except (ValueError, UnicodeDecodeError) as error:
        raise ValueError(f"{header}: not valid JSON ({error})") from None
    if not isinstance(info, dict) or not isinstance(info.get("meta", {}), dict):
        raise ValueError(f"{header}: expected a JSON object with 'kind' and 'meta' (an object)")
    if info.get("kind") not in EDIT_KINDS:
        raise ValueError(f"{header}: unknown edit kind {info.get('kind')!r}; known: {sorted(EDIT_KINDS)}")
    try:
        return EDIT_KINDS[info["kind"]]._load_payload(folder, info.get("meta", {}))
    except SAVED_FILE_ERRORS as error:
        raise ValueError(f"{folder}: the saved {info['kind']} edit cannot be read: {one_line(error)}") from None


def one_line(error: BaseException) -> str:
    """``Type: message`` of an error, on one line."""
    text = " ".join(str(error).split())
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def _safetensors_errors() -> tuple[type[BaseException], ...]:
    from safetensors import SafetensorError

    return (SafetensorError,)


# What reading a damaged saved edit raises: safetensors' own error (truncated file, absurd header
# size), a missing file, or a tensor that does not fit its record (checked in the loaders).
SAVED_FILE_ERRORS = (*_safetensors_errors(), OSError, ValueError, KeyError, IndexError, RuntimeError)


def saved_tensors(folder: str | Path) -> Iterator[tuple[str, Any]]:
    """Every tensor of every ``.safetensors`` file under ``folder``, as ``("file: key", tensor)``,
    one at a time; a file that cannot be read is a ValueError naming it."""
    from safetensors import safe_open

    for file in sorted(Path(folder).rglob("*.safetensors")):
        try:
            with safe_open(str(file), "pt") as handle:
                for key in handle.keys():
                    yield f"{file}: {key}", handle.get_tensor(key)
        except SAVED_FILE_ERRORS as error:
            raise ValueError(f"{file}: not a readable safetensors file ({one_line(error)})") from None


def refuse_nonfinite(tensors: Iterator[tuple[str, Any]] | Any, what: str) -> None:
    """A ValueError naming the first tensor of ``tensors`` ((name, tensor) pairs) holding NaN or
    infinity: such an edit would be measured (or exported) as if it were a model."""
    import torch

    for name, tensor in tensors:
        if torch.is_floating_point(tensor) and not bool(torch.isfinite(tensor).all()):
            bad = int((~torch.isfinite(tensor)).sum())
            raise ValueError(f"{what}: {name} holds {bad} non-finite value(s) (NaN or infinity); refusing to "
                             "use it (a diverged training step? a damaged file?)")


@register_edit
class CompositeEdit(Edit):
    """Several edits applied in order and removed in reverse (e.g. a pruning mask, then a weight change)."""

    kind = "composite"

    def __init__(self, parts: list[Edit], meta: dict[str, Any] | None = None):
        if not parts:
            raise ValueError("a composite edit needs at least one part")
        self.parts = list(parts)
        self.meta = dict(meta or {})

    def apply(self, vlm: Any) -> EditHandle:
        handles: list[EditHandle] = []
        try:
            for part in self.parts:
                handles.append(part.apply(vlm))
        except Exception:
            for handle in reversed(handles):
                handle.remove()
            raise

        def undo() -> None:
            for handle in reversed(handles):
                handle.remove()

        return EditHandle(undo)

    @contextmanager
    def for_task(self, task: str) -> Iterator[None]:
        with ExitStack() as stack:
            for part in self.parts:
                stack.enter_context(part.for_task(task))
            yield

    @property
    def bakeable(self) -> bool:  # type: ignore[override]  # only if every part is
        return all(part.bakeable for part in self.parts)

    def bake(self, vlm: Any) -> None:
        for part in self.parts:
            part.bake(vlm)

    @property
    def changed_parameters(self) -> int:
        return sum(getattr(part, "changed_parameters", 0) for part in self.parts)

    def _save_payload(self, folder: Path) -> None:
        for k, part in enumerate(self.parts):
            part.save(folder / f"part{k}")

    @classmethod
    def _load_payload(cls, folder: Path, meta: dict[str, Any]) -> "CompositeEdit":
        parts = []
        k = 0
        while (folder / f"part{k}").is_dir():
            parts.append(load_edit(folder / f"part{k}"))
            k += 1
        return cls(parts, meta)
