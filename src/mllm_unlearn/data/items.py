"""The plain records every benchmark loader produces and every method and metric reads."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Literal, Sequence

Modality = Literal["vqa", "qa"]
Task = Literal["mcq", "cloze", "generation", "train"]
OPTION_KEYS = ("A", "B", "C", "D")
# Item meta flag: knowledge injection trains on the item, unlearning methods never see it.
INJECTION_ONLY = "injection_only"


@dataclass
class Item:
    """One question about one person, in one modality.

    ``image`` is a PIL image for ``vqa`` items and ``None`` for text-only ``qa`` items.
    ``options`` (mcq only) maps a letter to an option text; ``answer`` is then the letter.
    Likelihood protocols (CLEAR, TOFU-style) score ``answer`` against a ``paraphrased_answer``
    and wrong ``perturbed_answers`` of the same question.
    """

    person_id: str
    split: str
    modality: Modality
    task: Task
    question: str
    answer: str
    image: Any = None
    options: dict[str, str] | None = None
    image_key: str | None = None  # stable name of the image, for per-item predictions
    meta: dict[str, Any] = field(default_factory=dict)
    paraphrased_answer: str | None = None
    perturbed_answers: list[str] | None = None

    def __post_init__(self) -> None:
        if self.modality == "vqa" and self.image is None:
            raise ValueError(f"vqa item of person {self.person_id} ({self.question!r}) has no image")
        if self.modality == "qa" and self.image is not None:
            raise ValueError(f"qa item of person {self.person_id} must not carry an image")


@dataclass
class Benchmark:
    """Evaluation splits and training data of one benchmark instance (e.g. MLLMU-Bench forget 10%)."""

    name: str
    # MLLMU-Bench: "forget", "test", "retain", "real_world"; CLEAR: its six tasks (data/clear.py)
    eval_splits: dict[str, list[Item]]
    forget_train: list[Item]  # what unlearning methods see of the forget people
    retain_train: list[Item]  # what methods may use to preserve the retain people
    finetune_train: list[Item]  # knowledge injection data ("vanilla" fine-tuning)
    pretrain_train: list[Item] = field(default_factory=list)  # prior knowledge (real-world people)
    forget_ids: list[str] = field(default_factory=list)
    # Non-members for membership inference: training-form items about people the vanilla
    # model never saw (MLLMU-Bench's people are all trained on, so only an optional
    # ``Holdout_Set`` config provides them; the built-in world writes one). May be empty.
    holdout: list[Item] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)
    protocol: str = "mllmu"  # which evaluation protocol reads ``eval_splits``: "mllmu" or "clear"
    # MLLMU-Bench's few-shot source (its ``Full_Set`` config): the evaluation items of the
    # profiles with the given IDs, read on demand so only those profiles' images are decoded
    # (data/mllmu_protocol.py). None when the benchmark has no ``Full_Set``.
    demonstrations: Callable[[Sequence[str]], list[Item]] | None = None
    # The validation view (same kind of splits and training data, other people) on which
    # ``mllm-unlearn sweep`` chooses hyperparameters; None when the benchmark has none
    # (``sweep.validation_benchmark`` then carves one out, see there).
    validation: "Benchmark | None" = None

    def prior_knowledge(self) -> list[Item]:
        """``pretrain_train`` as unlearning methods may see it: without the items only knowledge
        injection trains on (``meta[INJECTION_ONLY]``, e.g. the built-in CLEAR world's name question)."""
        return [i for i in self.pretrain_train if not i.meta.get(INJECTION_ONLY)]

    def retain_only(self) -> "Benchmark":
        """The same benchmark with the forget people's training data removed (a "gold" model's data)."""
        from dataclasses import replace

        people = set(self.forget_ids)
        forget_items = {id(i) for i in self.forget_train}  # also catches rows with no person (CLEAR's TOFU text)
        kept = [i for i in self.finetune_train if i.person_id not in people and id(i) not in forget_items]
        return replace(self, name=f"{self.name}:retain-only", finetune_train=kept, forget_train=[])
