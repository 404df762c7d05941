"""The same end-to-end path on every supported family: build, teach, evaluate, unlearn, save, reload."""
import pytest
import torch

from mllm_unlearn.data.collate import Encoder
from mllm_unlearn.eval import EvalConfig, evaluate
from mllm_unlearn.methods import MethodConfig, get_method
from mllm_unlearn.models import adapter_for_checkpoint, load_vlm
from mllm_unlearn.recipes import InjectionConfig, inject_knowledge

from ..conftest import FAMILIES


@pytest.mark.parametrize("family", FAMILIES)
def test_end_to_end_on_family(family, benchmark, tiny_vlm, tmp_path):
    vlm = tiny_vlm(family)
    adapter = vlm.adapter
    assert len(adapter.lm_layers(vlm.model)) == 2
    lm_sites, vision_sites = adapter.lm_ffn_sites(vlm.model), adapter.vision_ffn_sites(vlm.model)
    assert [s.width for s in lm_sites] == [128, 128] and vision_sites[0].width == 64
    assert vlm.model.get_submodule(lm_sites[0].module_path).in_features == 128
    assert adapter.projector(vlm.model) is not None

    history = inject_knowledge(vlm, benchmark, InjectionConfig(pretrain_epochs=1, finetune_epochs=1, skill_max_steps=4), progress=False)
    stage = history["finetune (benchmark people)"]
    assert stage["steps"] > 0 and stage["last_loss"] < history["pretrain (real-world people)"]["first_loss"]

    cfg = EvalConfig(tasks=("mcq", "cloze", "generation"), max_items_per_group=4, max_new_tokens=8, progress=False)
    results = evaluate(vlm, benchmark, cfg=cfg)
    for split in ("forget", "test", "retain", "real_world"):
        for modality in ("vqa", "qa"):
            cell = results["figures"][split][modality]
            assert 0 <= cell["mcq_accuracy"] <= 100 and "cloze_accuracy" in cell and "rougeL_f" in cell

    edit = get_method("ga").unlearn(vlm, benchmark.forget_train, benchmark.retain_train,
                                    MethodConfig(max_steps=2, batch_size=4, progress=False))
    assert edit.changed_parameters > 0
    probe = Encoder(vlm).batch(benchmark.eval_splits["forget"][:4], train=False)
    with torch.no_grad():
        original = vlm.model(**probe).logits
        with edit.applied(vlm):
            unlearned = vlm.model(**probe).logits
        assert not torch.equal(original, unlearned)  # the edit carries the trained weights
        assert torch.equal(vlm.model(**probe).logits, original)  # and the model was handed back unchanged

    vlm.save(tmp_path / "ckpt")
    assert adapter_for_checkpoint(tmp_path / "ckpt") is adapter
    reloaded = load_vlm(tmp_path / "ckpt", device="cpu")
    batch = Encoder(vlm).batch(benchmark.eval_splits["forget"][:3] + benchmark.eval_splits["forget"][-3:], train=False)
    batch2 = Encoder(reloaded).batch(benchmark.eval_splits["forget"][:3] + benchmark.eval_splits["forget"][-3:], train=False)
    for key in batch:
        assert torch.equal(batch[key], batch2[key]), key  # the reloaded processor encodes identically
    with torch.no_grad():
        assert torch.equal(vlm.model(**batch).logits, reloaded.model(**batch).logits)


def test_unsupported_checkpoint_is_named(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "bert"}')
    with pytest.raises(ValueError, match="model_type 'bert' is not supported"):
        adapter_for_checkpoint(tmp_path)
    with pytest.raises(FileNotFoundError, match="config.json"):
        adapter_for_checkpoint(tmp_path / "missing")


@pytest.mark.parametrize(("device", "dtype", "message"), [("tpu", "float32", "--device must be auto, cpu, cuda or cuda:N"),
                                                         ("cpu", "fp8", "--dtype must be one of")])
def test_bad_device_or_dtype_is_named_before_the_checkpoint_is_read(tmp_path, device, dtype, message):
    from mllm_unlearn.models import load_vlm

    with pytest.raises(ValueError, match=message):
        load_vlm(tmp_path / "missing", device=device, dtype=dtype)
