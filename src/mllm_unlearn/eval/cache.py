"""The vanilla model's figures, computed once: a JSON cache of evaluation results under the
tool's cache dir (``RunConfig.cache_dir``/``eval``).

Every run of every method on the same vanilla model and benchmark measures the vanilla model
the same way; the evaluation of an unchanged model on unchanged items with unchanged settings
gives the same figures, so it is read back instead of recomputed. One file per *part* (the
full evaluation, the forget-split knowledge check, the generalisation breakdown, membership
inference...), named by its key, the hash of

- the model's content: SHA-256 of every file of its folder (weights, config, tokenizer and
  processor files), memoised per file by size and modification time so a large checkpoint is
  read once, not once per run;
- the content of the items the part reads (question, answer, options, image pixels...), so a
  changed benchmark file, forget split, seed or left-out validation people changes it;
- the part's settings (``EvalConfig`` and the like), the dtype, device type and image-size cap
  the model was loaded with, the torch and transformers versions, and ``SCORER_VERSION``.

A changed key is a different file (recomputed); ``reuse=False`` (``--no-eval-cache``) recomputes
and rewrites. A file that does not read back as a cache entry of its key (corrupt, truncated,
from another version) is recomputed with a warning. Files are JSON (never pickle), written to a
temporary name and renamed, with the modes the umask gives.
"""
from __future__ import annotations

import hashlib
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from ..data.items import Item
from ..utils import atomic_write_text, file_sha256, stable_hash

# Bump when a scorer's figures change for the same model, items and settings (a fixed bug, a new
# metric, a changed record layout): every cached figure then recomputes. 3: questions about one portrait
# share its prefix pass in both scorers (eval/prefix.py); 4: the tiny models' generations keep
# apostrophes inside words, and CLEAR's knowledge-check part generates its face-recognition items.
SCORER_VERSION = 4
CACHE_FOLDER = "eval"
HASH_MEMO = "file-hashes.json"
# Files of a model folder that do not change its outputs (the tool's own notes beside the weights).
IGNORED_MODEL_FILES = ("injection.json", "finetune.json", "README.md")


def write_json_atomic(path: Path, value: Any) -> None:
    """``value`` as JSON at ``path``, written aside and renamed (a reader never sees half a file),
    with the umask's mode (a shared cache dir stays readable to its other users)."""
    atomic_write_text(path, json.dumps(value, default=str, sort_keys=True))


def folder_content_hash(folder: str | Path, memo_dir: str | Path | None = None) -> str:
    """SHA-256 over every file of a model folder (relative name and content; the tool's notes
    ``IGNORED_MODEL_FILES`` left out). With ``memo_dir`` each file's hash is remembered there by
    its resolved path, size and modification time, so an unchanged checkpoint is not read again."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"model folder {folder} does not exist")
    memo_path = Path(memo_dir) / HASH_MEMO if memo_dir is not None else None
    memo: dict[str, str] = {}
    if memo_path is not None and memo_path.is_file():
        try:
            loaded = json.loads(memo_path.read_text())
            memo = {k: v for k, v in loaded.items() if isinstance(k, str) and isinstance(v, str)} if isinstance(loaded, dict) else {}
        except (OSError, ValueError):
            memo = {}  # a damaged memo only costs re-reading the files
    changed = False
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        relative = path.relative_to(folder).as_posix()
        if relative in IGNORED_MODEL_FILES or any(part.startswith(".") for part in path.relative_to(folder).parts):
            continue
        stat = path.stat()
        stamp = f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"
        content = memo.get(stamp)
        if content is None:
            content = memo[stamp] = file_sha256(path)
            changed = True
        digest.update(f"{relative}\0{content}\n".encode())
    if changed and memo_path is not None:
        write_json_atomic(memo_path, memo)
    return digest.hexdigest()


def _image_digest(image: Any) -> str:
    if image is None:
        return ""
    if isinstance(image, (str, Path)):
        return f"path:{image}"
    digest = hashlib.sha256(f"{image.mode}:{image.size}".encode())
    digest.update(image.tobytes())
    return digest.hexdigest()


def items_content_hash(items: Iterable[Item]) -> str:
    """SHA-256 over the items in order: every field a scorer reads, the image's pixels included."""
    digest = hashlib.sha256()
    images: dict[int, str] = {}  # the same portrait object under many questions: hashed once
    for item in items:
        image = images.get(id(item.image))
        if image is None:
            image = images[id(item.image)] = _image_digest(item.image)
        fields = [item.person_id, item.split, item.modality, item.task, item.question, item.answer, item.options,
                  item.image_key, item.paraphrased_answer, item.perturbed_answers, image]
        digest.update(json.dumps(fields, sort_keys=True, default=str).encode())
    return digest.hexdigest()


def environment() -> dict[str, str]:
    """The library versions a cached figure was computed with (another version may round differently)."""
    import torch
    import transformers

    return {"torch": torch.__version__, "transformers": transformers.__version__}


@dataclass
class EvalCache:
    """The cache of one model's figures. ``model_key``: what the model is (``folder_content_hash``)
    and how it was loaded (dtype, device type, image-size cap); ``root`` None switches caching
    off (nothing read or written). Each ``fetch`` is recorded in ``parts``."""

    root: Path | None
    model_key: dict[str, Any]
    reuse: bool = True
    parts: dict[str, dict[str, Any]] = field(default_factory=dict)

    def key(self, part: str, items: Iterable[Item], settings: Any) -> str:
        return stable_hash({"part": part, "model": self.model_key, "items": items_content_hash(items),
                            "settings": settings, "scorer_version": SCORER_VERSION, "environment": environment()},
                           length=24)

    def path(self, part: str, key: str) -> Path:
        assert self.root is not None
        return self.root / f"{part}-{key}.json"

    def fetch(self, part: str, items: Iterable[Item], settings: Any, compute: Callable[[], Any]) -> Any:
        """The cached value of ``part`` for these items and settings, or ``compute()`` (then cached).
        A fresh value comes back as it would read back from the file (tuples as lists), so a run's
        figures are the same whichever way they came."""
        if self.root is None:
            self.parts[part] = {"reused": False, "path": None, "key": None}
            return compute()
        key = self.key(part, items, settings)
        path = self.path(part, key)
        if self.reuse and path.is_file():
            value = self._read(path, part, key)
            if value is not None:
                self.parts[part] = {"reused": True, "path": str(path), "key": key}
                return value["value"]
        fresh = json.loads(json.dumps(compute(), default=str))
        write_json_atomic(path, {"part": part, "key": key, "scorer_version": SCORER_VERSION, "value": fresh})
        self.parts[part] = {"reused": False, "path": str(path), "key": key}
        return fresh

    @staticmethod
    def _read(path: Path, part: str, key: str) -> dict[str, Any] | None:
        try:
            entry = json.loads(path.read_text())
            if not (isinstance(entry, dict) and entry.get("part") == part and entry.get("key") == key
                    and entry.get("scorer_version") == SCORER_VERSION and "value" in entry):
                raise ValueError("not a cache entry of this key")
            return entry
        except (OSError, ValueError) as error:
            print(f"warning: evaluation cache file {path} is unreadable ({error}); recomputing it", file=sys.stderr)
            return None

    def record(self, main_part: str) -> dict[str, Any]:
        """results.json's ``vanilla_eval_cache``: whether every part was reused, the main part's
        file and key, and each part's own record."""
        main = self.parts.get(main_part, {"path": None, "key": None})
        return {"reused": bool(self.parts) and all(p["reused"] for p in self.parts.values()),
                "path": main["path"], "key": main["key"], "parts": dict(self.parts)}
