import pytest
import torch

from mllm_unlearn.data.collate import IGNORE, Encoder
from mllm_unlearn.localization.statistics import SiteStatistics, collect_neuron_statistics, position_mask, stored_activations

FIELDS = ("abs_mean", "frequency", "mean", "variance", "rms")


def _batches(vlm, items, size):
    encoder = Encoder(vlm)
    return [encoder.batch(items[k:k + size], train=True) for k in range(0, len(items), size)]


def _raw_inputs(vlm, batches, sites):
    """Every site's full down-projection input per batch (padding included), by an independent hook."""
    raw = {s.name: [] for s in sites}
    handles = [vlm.model.get_submodule(s.module_path).register_forward_pre_hook(
        lambda _m, args, name=s.name: raw[name].append(args[0].detach().clone())) for s in sites]
    try:
        with torch.no_grad():
            for batch in batches:
                vlm.model(**{k: v for k, v in batch.items() if k != "labels"})
    finally:
        for h in handles:
            h.remove()
    return raw


def _close(streamed: SiteStatistics, reference: SiteStatistics) -> None:
    assert streamed.count == reference.count
    for field in FIELDS:
        assert torch.allclose(getattr(streamed, field), getattr(reference, field), rtol=1e-5, atol=1e-6), field


@pytest.mark.parametrize("family", ["llava", "qwen2.5-vl"])
def test_streaming_statistics_equal_stored_activation_statistics(family, benchmark, tiny_vlm):
    vlm = tiny_vlm(family)
    # Mixed lengths (VQA + QA, several people) so every batch is left-padded.
    items = benchmark.forget_train[:3] + benchmark.retain_train[::97][:6] + benchmark.forget_train[-2:]
    batches = _batches(vlm, items, 4)
    assert any(bool((b["attention_mask"] == 0).any()) for b in batches)
    lm, vision = vlm.adapter.lm_ffn_sites(vlm.model), vlm.adapter.vision_ffn_sites(vlm.model)
    raw = _raw_inputs(vlm, batches, lm + vision)
    for positions in ("all", "answer", "last"):
        streamed = collect_neuron_statistics(vlm.model, batches, lm, vision, positions, threshold=0.05)
        for site in lm:
            rows = []
            for batch, acts in zip(batches, raw[site.name]):
                for b in range(acts.shape[0]):
                    real = batch["attention_mask"][b].bool()
                    answer = torch.zeros_like(real)
                    answer[:-1] = batch["labels"][b, 1:] != IGNORE  # positions that predict an answer token
                    keep = {"all": real, "answer": answer & real}.get(positions)
                    if keep is None:  # last prompt token = first position predicting the answer
                        keep = torch.zeros_like(real)
                        keep[int(torch.nonzero(answer)[0])] = True
                    rows.append(acts[b][keep])
            reference = SiteStatistics.from_activations(torch.cat(rows), threshold=0.05)
            _close(streamed[site.name], reference)
        for site in vision:  # every position the vision tower computes
            reference = SiteStatistics.from_activations(torch.cat([a.reshape(-1, site.width) for a in raw[site.name]]), 0.05)
            _close(streamed[site.name], reference)
            assert streamed[site.name].count > 0
    # The stored-activation path (used by the memory benchmark) gives the same statistics.
    stored = stored_activations(vlm.model, batches, lm, vision, "answer")
    streamed = collect_neuron_statistics(vlm.model, batches, lm, vision, "answer", threshold=0.1)
    for site in lm + vision:
        _close(streamed[site.name], SiteStatistics.from_activations(stored[site.name], 0.1))


def test_padding_is_excluded_batched_equals_one_item_at_a_time(benchmark, tiny_vlm):
    vlm = tiny_vlm("llava")
    items = [benchmark.forget_train[0], benchmark.forget_train[len(benchmark.forget_train) // 2], benchmark.retain_train[1]]
    lm = vlm.adapter.lm_ffn_sites(vlm.model)
    batched = collect_neuron_statistics(vlm.model, _batches(vlm, items, 3), lm)
    alone = collect_neuron_statistics(vlm.model, _batches(vlm, items, 1), lm)
    padded = _batches(vlm, items, 3)[0]
    assert int((padded["attention_mask"] == 0).sum()) > 0
    for site in lm:
        assert batched[site.name].count == int(padded["attention_mask"].sum())
        for field in FIELDS:  # RoPE is relative, so left padding changes real tokens' activations only by rounding
            assert torch.allclose(getattr(batched[site.name], field), getattr(alone[site.name], field), atol=1e-4), field


@pytest.mark.parametrize("family", ["llava", "qwen2.5-vl"])
def test_text_only_items_contribute_nothing_to_vision_sites(family, benchmark, tiny_vlm):
    vlm = tiny_vlm(family)
    vqa = [i for i in benchmark.forget_train if i.modality == "vqa"][:3]
    qa = [i for i in benchmark.forget_train if i.modality == "qa"][:3]
    vision = vlm.adapter.vision_ffn_sites(vlm.model)
    only_text = collect_neuron_statistics(vlm.model, _batches(vlm, qa, 3), vision_sites=vision)
    assert all(s.count == 0 and torch.count_nonzero(s.rms) == 0 for s in only_text.values())
    mixed = collect_neuron_statistics(vlm.model, _batches(vlm, [vqa[0], qa[0], vqa[1], qa[1], vqa[2], qa[2]], 6),
                                      vision_sites=vision)
    images_only = collect_neuron_statistics(vlm.model, _batches(vlm, vqa, 3), vision_sites=vision)
    for site in vision:
        _close(mixed[site.name], images_only[site.name])


def test_hooks_are_removed_even_when_the_forward_fails(benchmark, tiny_vlm):
    vlm = tiny_vlm("llava")
    lm = vlm.adapter.lm_ffn_sites(vlm.model)
    batch = _batches(vlm, benchmark.forget_train[:2], 2)[0]
    broken = {**batch, "input_ids": batch["input_ids"][:, :-1]}  # no longer lines up with the mask
    with pytest.raises(Exception):  # noqa: B017 - whichever error the model raises, the hooks must come off
        collect_neuron_statistics(vlm.model, [broken], lm)
    assert all(not vlm.model.get_submodule(s.module_path)._forward_pre_hooks for s in lm)


def test_position_mask_rules():
    batch = {"attention_mask": torch.tensor([[0, 1, 1, 1, 1], [1, 1, 1, 1, 1]]),
             "labels": torch.tensor([[IGNORE, IGNORE, IGNORE, 7, 8], [IGNORE, IGNORE, 5, 6, 9]])}
    assert position_mask(batch, "all").tolist() == [[False, True, True, True, True], [True] * 5]
    assert position_mask(batch, "answer").long().tolist() == [[0, 0, 1, 1, 0], [0, 1, 1, 1, 0]]
    assert position_mask(batch, "last").long().tolist() == [[0, 0, 1, 0, 0], [0, 1, 0, 0, 0]]
    no_labels = {"attention_mask": batch["attention_mask"]}
    assert position_mask(no_labels, "last").long().tolist() == [[0, 0, 0, 0, 1], [0, 0, 0, 0, 1]]
    with pytest.raises(ValueError, match="needs batches with labels"):
        position_mask(no_labels, "answer")
    with pytest.raises(ValueError, match="positions must be one of"):
        position_mask(batch, "first")


def test_streaming_variance_is_sound_for_large_offsets():
    from mllm_unlearn.localization.statistics import _RunningSite

    torch.manual_seed(0)
    chunks = [1e4 + torch.randn(n, 3) for n in (5, 1, 17)]
    running = _RunningSite(3, threshold=0.0)
    for chunk in chunks:
        running.add(chunk)
    reference = SiteStatistics.from_activations(torch.cat(chunks), 0.0)
    assert torch.allclose(running.result().variance, reference.variance, rtol=1e-4)
