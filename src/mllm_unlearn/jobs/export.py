"""Exporting an unlearned model: a normal checkpoint with the edit baked in, or a peft adapter,
each with ``unlearning.json`` saying what was removed and how."""
from __future__ import annotations

import json
from pathlib import Path

from ..interventions import CompositeEdit, Edit, LowRankDelta
from ..models import VLM
from .results import versions

UNLEARNING_FILE = "unlearning.json"  # provenance written beside an exported checkpoint's weights


def export_unlearned_model(vlm: VLM, edit: Edit, out: str | Path, base_model: str | None = None) -> Path:
    """Bake ``edit`` into ``vlm`` (in place) and save a normal checkpoint at ``out`` that
    ``from_pretrained`` loads, with ``unlearning.json`` saying what was removed and how.
    A steering edit acts on activations and cannot be baked: ValueError, nothing written."""
    out = Path(out)
    if out.exists():
        raise FileExistsError(f"{out} already exists: choose a new folder for the unlearned checkpoint")
    if not edit.bakeable:
        raise ValueError(f"a {edit.kind} edit acts on each input's activations and cannot be baked into weights; "
                         "apply it at inference with load_edit(...).apply(vlm) instead of exporting a checkpoint")
    edit.bake(vlm)
    provenance = {"edit_kind": edit.kind, "method": edit.meta.get("method"), "base_model": base_model,
                  "edit_meta": edit.meta, "versions": versions()}
    vlm.save(out, extra_files={UNLEARNING_FILE: json.dumps(provenance, indent=2, default=str)})
    return out


def export_peft_adapter(edit: Edit, out: str | Path, base_model: str | None = None) -> Path:
    """Write a LoRA edit (``LowRankDelta``) as a standard peft adapter folder at ``out``
    (``PeftModel.from_pretrained(base, out)``), with ``unlearning.json`` beside it. Other edits,
    or a LoRA edit combined with other changes (MIP-Editor's pruning), cannot be an adapter:
    ValueError naming what is there, nothing written."""
    out = Path(out)
    if out.exists():
        raise FileExistsError(f"{out} already exists: choose a new folder for the adapter")
    if not isinstance(edit, LowRankDelta):
        kinds = [p.kind for p in edit.parts] if isinstance(edit, CompositeEdit) else [edit.kind]
        raise ValueError(f"only a LoRA edit (low_rank_delta, from a run with --lora) exports as a peft adapter; this "
                         f"edit is {' + '.join(kinds)}: export it as a checkpoint instead (without --peft-adapter)")
    edit.export_peft_adapter(out, base_model=base_model)
    provenance = {"edit_kind": edit.kind, "method": edit.meta.get("method"), "base_model": base_model,
                  "edit_meta": edit.meta, "versions": versions()}
    (out / UNLEARNING_FILE).write_text(json.dumps(provenance, indent=2, default=str))
    return out
