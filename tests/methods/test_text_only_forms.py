"""On MLLMU-Bench's published layout (no ``Type`` in ft_Data: every training pair is image +
question), MANU, MMUnlearner's language mask and MIP-Editor's text paths receive text-only forms
of the training pairs (data/text_forms.py), and say so clearly when none can be built."""
import pytest

from mllm_unlearn.data import load_mllmu
from mllm_unlearn.data.items import Item
from mllm_unlearn.data.text_forms import PERSON_NAME, TextFormError, text_only_train
from mllm_unlearn.jobs.prepare import benchmark_texts
from mllm_unlearn.methods import MethodConfig, get_method
from mllm_unlearn.models.tiny import build_tiny_vlm, words_of
from tests.conftest import SMALL_SIZE


@pytest.fixture(scope="module")
def published(published_mllmu_dir):
    return load_mllmu(published_mllmu_dir, forget_percent=10)


@pytest.fixture
def vlm(published):
    return build_tiny_vlm("llava", words_of(benchmark_texts(published)), SMALL_SIZE, seed=0)


def _spy(monkeypatch, module, name, position=0):
    """Record the items argument of ``module.name`` on every call, then call it."""
    seen = []
    original = getattr(module, name)

    def spy(*args, **kwargs):
        seen.append(list(args[position]))
        return original(*args, **kwargs)

    monkeypatch.setattr(module, name, spy)
    return seen


def _forms(published, which):
    forms = text_only_train(published, which, needed_by="test")
    assert forms and all(f.modality == "qa" and f.image is None for f in forms)
    return forms


def _is_text_form_list(items, expected):
    return [(i.person_id, i.question, i.answer, i.modality) for i in items] == \
        [(i.person_id, i.question, i.answer, i.modality) for i in expected]


def test_manu_scores_text_only_forms(monkeypatch, published, vlm):
    import mllm_unlearn.methods.manu as manu

    seen = _spy(monkeypatch, manu, "item_batches")
    cfg = MethodConfig(batch_size=8, progress=False, extra={"alpha": 0.1, "retain_items": 0})
    edit = get_method("manu").unlearn(vlm, published.forget_train, published.retain_train, cfg)
    forget_forms, retain_forms = _forms(published, "forget"), _forms(published, "retain")
    assert edit.meta["items"]["forget_text"] == len(forget_forms) and edit.meta["items"]["retain_text"] == len(retain_forms)
    assert any(_is_text_form_list(items, forget_forms) for items in seen)
    assert any(_is_text_form_list(items, retain_forms) for items in seen)


def test_mmunlearner_language_mask_preserves_text_only_forms_of_all_people(monkeypatch, published, vlm):
    import mllm_unlearn.methods.mmunlearner as mmunlearner

    seen = _spy(monkeypatch, mmunlearner, "item_batch_parts")  # its Fisher batches (token-bounded parts)
    cfg = MethodConfig(max_steps=1, batch_size=8, progress=False, extra={"mask": "language"})
    get_method("mmunlearner").unlearn(vlm, published.forget_train, published.retain_train, cfg)
    forms = _forms(published, "forget") + _forms(published, "retain")  # text-only QA of all people
    retain_vqa = [i for i in published.retain_train if i.modality == "vqa"]
    assert any(_is_text_form_list(items[:len(forms)], forms) and items[len(forms):] == retain_vqa for items in seen)


def test_mip_editor_searches_text_paths_on_text_only_forms(monkeypatch, published, vlm):
    import mllm_unlearn.methods.mip_editor as mip_editor

    seen = _spy(monkeypatch, mip_editor, "search_paths", position=2)
    cfg = MethodConfig(progress=False, extra={"paths": "both", "steps": 1, "top_k": 2, "train": False})
    get_method("mip-editor").unlearn(vlm, published.forget_train, published.retain_train, cfg)
    assert len(seen) == 2  # IGI on the text-only forms, IFI on the image + question pairs
    assert _is_text_form_list(seen[0], _forms(published, "forget"))
    assert seen[1] == [i for i in published.forget_train if i.modality == "vqa"]


@pytest.mark.parametrize("method, extra, who", [
    ("manu", {"forms": ["text"]}, "manu"),
    ("mmunlearner", {"mask": "language"}, r"mmunlearner \(mask=language\)"),
    ("mip-editor", {"paths": "both", "train": False}, r"mip-editor \(paths=both\)"),
])
def test_no_name_anywhere_is_one_clear_error(published, vlm, method, extra, who):
    def nameless(items):
        return [Item(i.person_id, i.split, i.modality, i.task, i.question, i.answer, i.image, meta={PERSON_NAME: None})
                for i in items]

    cfg = MethodConfig(max_steps=1, batch_size=8, progress=False, extra=extra)
    with pytest.raises(TextFormError, match=rf"{who} needs text-only .* items: .*no Pure_Text pairs .*no person name"):
        get_method(method).unlearn(vlm, nameless(published.forget_train), nameless(published.retain_train), cfg)
