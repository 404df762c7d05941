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
    folder = Path(path)
    header = folder / "edit.json"
    if not header.is_file():
        raise FileNotFoundError(f"{folder} is not a saved edit: {header} is missing")
    info = json.loads(header.read_text())
    if info.get("kind") not in EDIT_KINDS:
        raise ValueError(f"{header}: unknown edit kind {info.get('kind')!r}; known: {sorted(EDIT_KINDS)}")
    return EDIT_KINDS[info["kind"]]._load_payload(folder, info.get("meta", {}))


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
