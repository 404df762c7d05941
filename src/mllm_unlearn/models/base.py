"""What every model family must tell the toolkit, and the loaded-model handle.

Family-specific knowledge (config classes, processor construction, module paths) lives
only in the adapter files next to this one; the rest of the toolkit asks an adapter.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn


@dataclass(frozen=True)
class TinySize:
    """Dimensions of a tiny model of a real architecture (random init, trained here)."""

    hidden: int = 128
    layers: int = 4
    heads: int = 4
    ffn: int = 256
    vision_hidden: int = 64
    vision_layers: int = 2
    vision_heads: int = 2
    vision_ffn: int = 128
    image_size: int = 32
    image_grid: int = 2  # LLaVA: patches per image side (image tokens = image_grid²; each patch still shows the face)
    max_positions: int = 512


@dataclass(frozen=True)
class NeuronSite:
    """A set of FFN neurons: the input coordinates of one down-projection module."""

    name: str  # e.g. "lm.3" or "vision.1"
    module_path: str  # dotted path inside the model
    width: int  # number of neurons (in_features of the down projection)


class ModelAdapter:
    """Base class; one subclass per model family, registered in ``ADAPTERS``."""

    family: ClassVar[str]
    model_types: ClassVar[tuple[str, ...]]  # values of ``config.model_type`` this adapter handles
    image_placeholder: ClassVar[str]  # the token a tiny tokenizer must know as special
    # Benchmarks whose own evaluation code writes this family's prompts (e.g. "mllmu": MLLMU-Bench's
    # eval.py writes LLaVA-1.5's); under that benchmark's protocol they replace the chat template.
    benchmark_prompts: ClassVar[tuple[str, ...]] = ()
    # Config attributes holding the ids of the tokens that stand for visual content in a prompt.
    visual_token_config_keys: ClassVar[tuple[str, ...]] = ("image_token_id",)

    # --- tiny models -----------------------------------------------------------------
    def special_tokens(self) -> list[str]:
        raise NotImplementedError

    def tiny_model(self, tokenizer: Any, size: TinySize) -> nn.Module:
        raise NotImplementedError

    def tiny_processor(self, tokenizer: Any, size: TinySize) -> Any:
        raise NotImplementedError

    # --- loading ---------------------------------------------------------------------
    def load_processor(self, path: str | Path) -> Any:
        from transformers import AutoProcessor

        return AutoProcessor.from_pretrained(str(path))

    def save_processor(self, processor: Any, path: str | Path) -> None:
        processor.save_pretrained(str(path))

    def check_max_pixels(self, max_pixels: int) -> None:
        """Refuse ``--max-pixels`` where it means nothing: by default every image is resized to one
        fixed size (LLaVA); families with dynamic resolution override this."""
        raise ValueError(f"--max-pixels applies to Qwen2-VL and Qwen2.5-VL, whose image token count grows with the "
                         f"image; {self.family} resizes every image to one fixed size")

    def limit_image_pixels(self, processor: Any, max_pixels: int) -> None:
        """Cap the pixels of each image the loaded ``processor`` feeds the model."""
        self.check_max_pixels(max_pixels)

    def image_max_pixels(self, processor: Any) -> int | None:
        """The processor's cap on an image's pixels; ``None`` for fixed-size families."""
        return None

    # --- where things live -----------------------------------------------------------
    # Each family declares its modules by path; several candidates per module because
    # transformers moved them (the 4.52 refactor) and peft adds prefixes (see ``_find_module``).
    lm_layer_paths: ClassVar[tuple[str, ...]]  # the language model's decoder layers
    language_model_paths: ClassVar[tuple[str, ...]]  # the language model: embeddings, layers, final norm
    vision_tower_paths: ClassVar[tuple[str, ...]]  # the whole vision encoder
    vision_block_paths: ClassVar[tuple[str, ...]]  # the vision encoder's layers
    projector_paths: ClassVar[tuple[str, ...]]  # vision -> language projector (Qwen: the merger, inside the tower)
    vision_down_proj_name: ClassVar[str]  # leaf name of the vision FFN's down projection

    def lm_layers(self, model: nn.Module) -> nn.ModuleList:
        return _find_module(model, self.lm_layer_paths)

    def language_model(self, model: nn.Module) -> nn.Module:
        return _find_module(model, self.language_model_paths)

    # The language model's final norm, by leaf name inside it (Llama and Qwen2: "norm").
    final_norm_name: ClassVar[str] = "norm"

    def final_norm(self, model: nn.Module) -> nn.Module:
        """The norm applied to the last decoder layer's output before the output head."""
        return self.language_model(model).get_submodule(self.final_norm_name)

    def output_head(self, model: nn.Module) -> nn.Module:
        """The output head (hidden state -> vocabulary logits)."""
        head = model.get_output_embeddings()
        if head is None:
            raise AttributeError(f"{type(model).__name__} has no output head (get_output_embeddings() is None)")
        return head

    @staticmethod
    def layer_hidden(output: Any) -> torch.Tensor:
        """A decoder layer's output hidden states (a tensor, or the first element of a tuple)."""
        return output[0] if isinstance(output, (tuple, list)) else output

    def vision_tower(self, model: nn.Module) -> nn.Module:
        return _find_module(model, self.vision_tower_paths)

    def vision_blocks(self, model: nn.Module) -> nn.ModuleList:
        return _find_module(model, self.vision_block_paths)

    def projector(self, model: nn.Module) -> nn.Module:
        return _find_module(model, self.projector_paths)

    def shard_units(self, model: nn.Module) -> list[nn.Module]:
        """The blocks that become one FSDP2 group each when training is sharded (``--shard fsdp``):
        the decoder layers. The rest (embeddings, vision tower, projector, head) is sharded with the
        root group. Not the vision blocks on their own: a batch without images skips the vision
        tower, and a group that one process runs and another skips deadlocks the collectives."""
        return list(self.lm_layers(model))

    def visual_token_ids(self, model: nn.Module) -> set[int]:
        """Ids of the prompt tokens that stand for image (or video) content: never loss targets, and
        where a portrait is in a prompt."""
        config = model.config
        return {int(value) for key in self.visual_token_config_keys
                if isinstance(value := getattr(config, key, None), int)}

    def read_vision_blocks(self, model: nn.Module) -> int:
        """How many vision blocks, counted from the first, feed the model's output (default: all)."""
        return len(self.vision_blocks(model))

    def unread_vision_modules(self, model: nn.Module) -> list[str]:
        """Paths of vision-tower modules whose output the model never reads: the blocks after the
        last one read (and family-specific heads, see LLaVA)."""
        blocks = self.vision_blocks(model)
        base = module_path(model, blocks)
        return [f"{base}.{index}" for index in range(self.read_vision_blocks(model), len(blocks))]

    def tower_parameters(self, model: nn.Module, tower: str) -> dict[str, nn.Parameter]:
        """Named parameters (names as in ``model.named_parameters()``) of one tower.

        ``vision``: the vision encoder and its projector (merger), without the modules whose output
        the model never reads (``unread_vision_modules``): they cannot carry what the model knows.
        ``language``: the language model (embeddings, decoder layers, final norm); the output head
        belongs to neither tower.
        """
        if tower not in TOWERS:
            raise ValueError(f"tower must be one of {TOWERS}, got {tower!r}")
        vision = [module_path(model, self.vision_tower(model)), module_path(model, self.projector(model))]
        language = [module_path(model, self.language_model(model))]
        for v in vision:  # a candidate path that matched too much (e.g. a whole model) is a bug, not a tower
            for lm in language:
                if _under(v, lm) or _under(lm, v):
                    raise AttributeError(f"{self.family}: the vision module {v!r} and the language model {lm!r} "
                                         "overlap; the adapter's module paths do not fit this model")
        unread = self.unread_vision_modules(model) if tower == "vision" else []
        prefixes = vision if tower == "vision" else language
        return {name: param for name, param in model.named_parameters()
                if any(_under(name, p) for p in prefixes) and not any(_under(name, u) for u in unread)}

    def lm_ffn_sites(self, model: nn.Module) -> list[NeuronSite]:
        return self._sites(model, self.lm_layers(model), "lm", "mlp.down_proj")

    def vision_ffn_sites(self, model: nn.Module, required_by: str | None = None) -> list[NeuronSite]:
        """FFN sites of the vision blocks whose output the model reads; may be empty (a LLaVA whose
        one vision layer is past its ``vision_feature_layer``). With ``required_by`` (a method's
        name), an empty list is a ValueError saying why."""
        sites = self._sites(model, self.vision_blocks(model), "vision", f"mlp.{self.vision_down_proj_name}")
        read = sites[: self.read_vision_blocks(model)]
        if required_by and not read:
            raise ValueError(f"{required_by}: no vision layer of this {self.family} model is read by the language "
                             f"model ({len(sites)} vision layer(s), none before the layer the model takes its image "
                             "features from), so there are no vision neurons to work on")
        return read

    def repeat_examples(self, batch: dict[str, torch.Tensor], times: int) -> dict[str, torch.Tensor]:
        """Each example of a collated batch repeated ``times`` times in a row (example-major).

        Default: every tensor has the examples along dimension 0 (LLaVA's images included).
        """
        return {name: value.repeat_interleave(times, dim=0) for name, value in batch.items()}

    def vision_rows_per_image(self, batch: dict[str, torch.Tensor]) -> torch.Tensor | None:
        """Rows of each image in the vision FFN input when the tower flattens images into one
        (tokens, width) sequence; ``None`` when its input is (images, tokens, width)."""
        return None

    def continuation_positions(self, model: nn.Module, prefix_length: int, suffix_length: int,
                               batch: int) -> torch.Tensor | None:
        """Position ids of ``suffix_length`` text tokens that follow a cached prefix of
        ``prefix_length`` tokens (the forward that filled the cache was the model's last), for
        ``batch`` rows; ``None``: the model's own default, consecutive positions after the cache
        (1-D rotary positions)."""
        return None

    def _sites(self, model: nn.Module, blocks: nn.ModuleList, kind: str, leaf: str) -> list[NeuronSite]:
        base = module_path(model, blocks)
        sites = []
        for index, block in enumerate(blocks):
            down = block.get_submodule(leaf)
            sites.append(NeuronSite(f"{kind}.{index}", f"{base}.{index}.{leaf}", down.in_features))
        return sites


ADAPTERS: dict[str, ModelAdapter] = {}
TOWERS = ("vision", "language")


def register_adapter(adapter: ModelAdapter) -> ModelAdapter:
    """Make a family known by name (``adapter_for_family``) and by checkpoint ``model_type``. Each
    family file registers its adapter; ``models/__init__.py`` imports the family files."""
    ADAPTERS[adapter.family] = adapter
    return adapter


def registered_special_tokens() -> list[str]:
    """Every registered family's special tokens, each once, in registration order: the tiny
    tokenizer knows them all so one vocabulary serves every family (the same ids)."""
    tokens: list[str] = []
    for adapter in ADAPTERS.values():
        tokens += [t for t in adapter.special_tokens() if t not in tokens]
    return tokens


def adapter_for_family(family: str) -> ModelAdapter:
    if family not in ADAPTERS:
        raise ValueError(f"unknown model family {family!r}; supported: {', '.join(sorted(ADAPTERS))}")
    return ADAPTERS[family]


def adapter_for_checkpoint(path: str | Path) -> ModelAdapter:
    """Pick the adapter from ``config.json``'s ``model_type``."""
    config_file = Path(path) / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"{path} is not a model checkpoint: {config_file} is missing")
    model_type = json.loads(config_file.read_text()).get("model_type")
    for adapter in ADAPTERS.values():
        if model_type in adapter.model_types:
            return adapter
    supported = sorted(t for a in ADAPTERS.values() for t in a.model_types)
    raise ValueError(f"{config_file}: model_type {model_type!r} is not supported; supported: {supported}")


def _find_module(model: nn.Module, candidates: tuple[str, ...]) -> nn.Module:
    # Several paths because transformers moved modules (4.52 refactor) and peft adds prefixes.
    # Candidates in order of preference, each tried under every root: a later, looser candidate
    # (Qwen's old-layout "model") must not match a peft wrapper before a precise one matches inside.
    roots = (model, getattr(model, "base_model", None), getattr(getattr(model, "base_model", None), "model", None))
    for path in candidates:
        for root in roots:
            if root is None:
                continue
            try:
                return root.get_submodule(path)
            except AttributeError:
                continue
    raise AttributeError(f"none of {candidates} found in {type(model).__name__}")


def _under(name: str, prefix: str) -> bool:
    """``name`` is the module/parameter ``prefix`` or lies inside it (dotted paths)."""
    return prefix == "" or name == prefix or name.startswith(prefix + ".")


def module_path(model: nn.Module, target: nn.Module) -> str:
    for name, module in model.named_modules():
        if module is target:
            return name
    raise AttributeError("module not found in model")


@dataclass
class VLM:
    """A loaded vision-language model with everything needed to use it."""

    model: nn.Module
    processor: Any
    adapter: ModelAdapter
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    dtype: torch.dtype = torch.float32

    @property
    def tokenizer(self) -> Any:
        return self.processor.tokenizer

    def decode(self, token_ids: Any) -> list[str]:
        """Generated token ids (a batch) as texts, special tokens dropped and ends stripped. The tiny
        models' word-level tokenizer splits "O'Rourke" into O ' Rourke and joins tokens with spaces;
        an apostrophe between two word characters is joined back here (the token ids are unchanged)."""
        texts = [t.strip() for t in self.tokenizer.batch_decode(token_ids, skip_special_tokens=True)]
        return [join_word_apostrophes(t) for t in texts] if is_word_level(self.tokenizer) else texts

    def save(self, path: str | Path, extra_files: dict[str, str] | None = None) -> None:
        """``save_pretrained`` of model and processor (plus ``extra_files``: name -> text), all
        appearing at ``path`` together or not at all."""
        from ..utils import atomic_directory

        with atomic_directory(path) as tmp:
            self.model.save_pretrained(str(tmp))
            self.adapter.save_processor(self.processor, tmp)
            for name, text in (extra_files or {}).items():
                (tmp / name).write_text(text)


_SPACED_APOSTROPHE = re.compile(r"(?<=\w) ' (?=\w)")


def join_word_apostrophes(text: str) -> str:
    """ "O ' Rourke isn ' t" -> "O'Rourke isn't": a word-level tokenizer's spaced apostrophes inside words."""
    return _SPACED_APOSTROPHE.sub("'", text)


def is_word_level(tokenizer: Any) -> bool:
    """Whether ``tokenizer`` is a word-level one (the tiny models'), which decodes with a space between every token."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    return backend is not None and type(backend.model).__name__ == "WordLevel"


def checkpoint_dtype(path: str | Path, training: bool = True) -> str:
    """What ``--dtype auto`` loads the checkpoint at ``path`` in: float32 for models this tool
    built (``injection.json`` beside the weights: tiny, trained in fp32), else the checkpoint's own
    ``dtype``/``torch_dtype`` from config.json (top level, else its text config), float32 if it
    names none. ``training``: a float16 checkpoint (LLaVA-1.5-7B's) loads as bfloat16, since
    float16 training is refused (same range as fp32, trained as fp32 master weights)."""
    folder = Path(path)
    if (folder / "injection.json").is_file():
        return "float32"
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        return "float32"
    found = None
    for section in (config, config.get("text_config") or {}):
        value = section.get("dtype") or section.get("torch_dtype")
        if isinstance(value, str) and value.replace("torch.", "") in ("float32", "bfloat16", "float16"):
            found = value.replace("torch.", "")
            break
    found = found or "float32"
    return "bfloat16" if training and found == "float16" else found


def load_vlm(path: str | Path, device: str = "auto", dtype: str = "float32", max_pixels: int | None = None,
             training: bool = True) -> VLM:
    """Load any local checkpoint of a supported family: the one loading path for tiny and real models.

    ``dtype``: float32, bfloat16, float16 or auto (``checkpoint_dtype``; ``training`` says whether
    the model may be trained, which turns an auto float16 into bfloat16).
    ``max_pixels`` (Qwen families only): cap each image's pixels below the checkpoint's own limit."""
    from transformers import AutoModelForImageTextToText

    from ..utils import resolve_device, resolve_dtype

    torch_device = resolve_device(device)  # option errors before file errors
    torch_dtype = resolve_dtype(dtype) if dtype != "auto" else None
    if torch_dtype is None:
        torch_dtype = resolve_dtype(checkpoint_dtype(path, training))
    adapter = adapter_for_checkpoint(path)
    processor = adapter.load_processor(path)
    processor.tokenizer.padding_side = "left"
    if max_pixels is not None:
        adapter.limit_image_pixels(processor, max_pixels)
    model = AutoModelForImageTextToText.from_pretrained(str(path), dtype=torch_dtype)
    model.to(torch_device).eval()
    return VLM(model, processor, adapter, torch_device, torch_dtype)
