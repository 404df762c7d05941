"""Edits: what every method returns. Applied reversibly, saved and loaded, or baked in."""
from __future__ import annotations

import json
from contextlib import contextmanager
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
