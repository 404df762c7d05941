"""Vanilla models shipped with the package: the default run's injected tiny model (LLaVA's, and
Qwen2.5-VL's for ``--family qwen2.5-vl``), so that a fresh
clone's first run starts from it instead of spending ~6 minutes of a 2-core CPU on knowledge
injection, and so that every machine evaluates the very weights ``docs/results.md`` was measured
on (a retrained model rounds differently on another CPU or torch build, and on this recipe that
moves figures by up to 25 points: docs/knowledge-injection.md#the-shipped-vanilla-models).

A shipped model is a cache entry (``pipeline.vanilla_location``: ``<family>-<key>``, the key a hash
of the injection's configuration and the world's content) plus ``shipped.json``: the SHA-256 of
its weights and how it was made. ``mllm-unlearn run`` copies it into the cache when the cache lacks
that key; ``--no-shipped-vanilla`` trains it instead. ``benchmarks/ship_vanilla.py`` writes it and
checks that retraining reproduces it.
"""
from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path
from typing import Any

from ..utils import atomic_directory, file_sha256, stable_hash

SHIPPED_ROOT = Path(__file__).parent.parent / "assets" / "vanilla"
MANIFEST = "shipped.json"
WEIGHTS = "model.safetensors"


def training_data_fingerprint(benchmark: Any) -> str:
    """A hash of what knowledge injection trains on (every training item's text, options and
    image pixels). A cache key names a world by its configuration; this catches a world generator
    that changed under a shipped model (same configuration, other people)."""
    from ..data.collate import image_fingerprint

    rows = [(i.split, i.person_id, i.modality, i.task, i.question, i.answer, i.options,
             image_fingerprint(i.image) if i.image is not None else None)
            for i in list(benchmark.pretrain_train) + list(benchmark.finetune_train)]
    return stable_hash(rows, length=16)


def shipped_model(name: str, root: Path | None = None) -> Path | None:
    """The shipped model named ``name`` (a cache entry's folder name, ``llava-2fcaa32a5ad6``), or None."""
    folder = (root or SHIPPED_ROOT) / name
    return folder if (folder / MANIFEST).is_file() else None


def shipped_models(root: Path | None = None) -> list[str]:
    return sorted(p.parent.name for p in (root or SHIPPED_ROOT).glob(f"*/{MANIFEST}"))


def verify_shipped(folder: Path) -> dict[str, Any]:
    """The manifest of a shipped model after checking that its files are there and its weights'
    SHA-256 is the recorded one (a git LFS pointer or a damaged checkout fails here, by name)."""
    manifest = json.loads((folder / MANIFEST).read_text())
    missing = [name for name in manifest["files"] if not (folder / name).is_file()]
    if missing:
        raise FileNotFoundError(f"shipped vanilla model {folder} lacks {', '.join(missing)}: reinstall mllm-unlearn, "
                                "or pass --no-shipped-vanilla to train the model here")
    found = file_sha256(folder / WEIGHTS)
    if found != manifest["sha256"]:
        raise ValueError(f"{folder / WEIGHTS}: SHA-256 {found[:16]}... is not the recorded {manifest['sha256'][:16]}... "
                         f"({MANIFEST}); the file is damaged (or a git LFS pointer): reinstall mllm-unlearn, or pass "
                         "--no-shipped-vanilla to train the model here")
    return manifest


def install_shipped(name: str, destination: Path, benchmark: Any, root: Path | None = None) -> dict[str, Any] | None:
    """Copy the shipped model ``name`` (verified) to the cache entry ``destination``, whole or not
    at all; its manifest, or None when no model of that name is shipped, or when it was trained on
    other data than ``benchmark``'s (a warning says so; the caller trains the model instead)."""
    folder = shipped_model(name, root)
    if folder is None:
        return None
    manifest = verify_shipped(folder)
    found = training_data_fingerprint(benchmark)
    if manifest.get("training_data") != found:
        warnings.warn(f"the shipped vanilla model {folder} was trained on other data than this world's (training-data "
                      f"fingerprint {manifest.get('training_data')} != {found}: the world generator changed since it was "
                      "shipped); training the model here instead. Maintainers: re-ship it with benchmarks/ship_vanilla.py",
                      stacklevel=2)
        return None
    _copy_entry(folder, destination, manifest)  # the cache entry keeps the manifest: it says where it came from
    return manifest


def _copy_entry(source: Path, target: Path, manifest: dict[str, Any]) -> None:
    """``manifest["files"]`` of ``source`` and the manifest itself into ``target``, whole or not at all."""
    with atomic_directory(target) as tmp:
        for file in manifest["files"]:
            shutil.copyfile(source / file, tmp / file)
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")


def write_shipped(entry: Path, benchmark: Any, made_by: dict[str, Any], root: Path | None = None) -> Path:
    """Ship the cache entry ``entry`` (a vanilla model trained on ``benchmark``): its files and a
    manifest with their weights' SHA-256, the training data's fingerprint and ``made_by``
    (command, versions, machine)."""
    # Every file the entry holds (``VLM.save`` plus ``injection.json``): which processor files a model
    # saves is the family's business (LLaVA's processor_config.json, Qwen's preprocessor_config.json).
    files = sorted(p.name for p in entry.iterdir() if p.is_file() and not p.name.startswith(".") and p.name != MANIFEST)
    for required in (WEIGHTS, "injection.json", "config.json"):
        if required not in files:
            raise FileNotFoundError(f"{entry} is not a finished vanilla cache entry: {required} is missing")
    target = (root or SHIPPED_ROOT) / entry.name
    _copy_entry(entry, target, {"name": entry.name, "sha256": file_sha256(entry / WEIGHTS), "files": files,
                                "training_data": training_data_fingerprint(benchmark), "made_by": made_by})
    return target
