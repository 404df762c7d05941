"""Retain items cycle through seeded shuffles of the whole retain set; the forget set defines an epoch."""
import math
from types import SimpleNamespace

import pytest

from mllm_unlearn.methods import MethodConfig, get_method
from mllm_unlearn.methods.base import RetainCycler


def _items(modality, count, start=0):
    return [SimpleNamespace(modality=modality, n=start + k) for k in range(count)]


def _epochs(cycler, forget_count, epochs, order=None):
    """Retain items drawn over ``epochs`` forget epochs, forget items drawn in ``order``."""
    order = order or list(range(forget_count))
    return [[cycler.pair(i) for i in order] for _ in range(epochs)]


def test_every_retain_item_is_drawn_once_before_any_twice_and_the_seed_fixes_the_pairs():
    forget, retain = _items("qa", 5), _items("qa", 23)
    drawn = [r.n for epoch in _epochs(RetainCycler(forget, retain, seed=3), 5, 10) for r in epoch]
    assert sorted(drawn[:23]) == list(range(23))  # one full pass within ceil(23 / 5) = 5 epochs, no repeats
    assert sorted(drawn[23:46]) == list(range(23)) and drawn[23:46] != drawn[:23]  # reshuffled between passes
    assert drawn == [r.n for epoch in _epochs(RetainCycler(forget, retain, seed=3), 5, 10) for r in epoch]
    assert drawn != [r.n for epoch in _epochs(RetainCycler(forget, retain, seed=4), 5, 10) for r in epoch]
    with pytest.raises(ValueError, match="at least one retain item"):
        RetainCycler(forget, [], seed=0)


def test_pairs_follow_the_forget_item_not_the_batch_order_and_keep_its_modality():
    forget = _items("vqa", 3) + _items("qa", 3, start=3)
    retain = _items("vqa", 7) + _items("qa", 11, start=7)
    in_order = _epochs(RetainCycler(forget, retain, seed=0), 6, 4)
    shuffled_order = [4, 0, 5, 2, 1, 3]
    shuffled = _epochs(RetainCycler(forget, retain, seed=0), 6, 4, shuffled_order)
    for epoch, other in zip(in_order, shuffled):
        assert [epoch[i].n for i in shuffled_order] == [r.n for r in other]  # how batches split does not matter
        assert [r.modality for r in epoch] == [f.modality for f in forget]
    # Each modality's retain items are all seen within ceil(R_m / F_m) epochs: 3 for VQA, 4 for QA.
    assert {r.n for epoch in in_order[:3] for r in epoch[:3]} == set(range(7))
    assert {r.n for epoch in in_order for r in epoch[3:]} == set(range(7, 18))
    # A modality the retain set lacks draws from every retain item.
    only_qa = RetainCycler(_items("vqa", 2), _items("qa", 3), seed=0)
    assert {only_qa.pair(0).n, only_qa.pair(1).n, only_qa.pair(0).n} == {0, 1, 2}


def test_unlearning_covers_the_retain_set_within_ceil_retain_over_forget_epochs(benchmark, tiny_vlm, monkeypatch):
    drawn: list = []
    pair = RetainCycler.pair

    def recording_pair(self, index):
        item = pair(self, index)
        drawn.append(item)
        return item

    monkeypatch.setattr(RetainCycler, "pair", recording_pair)
    forget, retain = benchmark.forget_train[:6], benchmark.retain_train[:20]
    assert {i.modality for i in forget} == {i.modality for i in retain} == {"vqa", "qa"}
    per_modality = {m: (sum(i.modality == m for i in forget), sum(i.modality == m for i in retain)) for m in ("vqa", "qa")}
    epochs = max(math.ceil(r / f) for f, r in per_modality.values())
    runs = []
    for _ in range(2):
        drawn.clear()
        cfg = MethodConfig(epochs=epochs, batch_size=4, lr=1e-4, progress=False)
        get_method("graddiff").unlearn(tiny_vlm(), forget, retain, cfg)
        runs.append([id(i) for i in drawn])
    assert len(runs[0]) == epochs * len(forget)  # one retain item per forget item, across epochs
    assert {id(i) for i in retain} <= set(runs[0])  # every retain item was seen
    assert runs[0] == runs[1]  # same seed, same retain batches


def test_epoch_pairing_does_not_depend_on_how_processes_split_the_forget_items():
    """Under several processes an item drawn by one process in epoch 0 may be drawn by another in
    epoch 1: the loop's epoch (set_epoch), not a per-process draw count, picks the pairing."""
    forget, retain = _items("vqa", 6), _items("vqa", 9)
    one = RetainCycler(forget, retain, seed=1)
    a, b = RetainCycler(forget, retain, seed=1), RetainCycler(forget, retain, seed=1)
    splits = [([0, 1, 2], [3, 4, 5]), ([3, 5, 1], [0, 2, 4]), ([4, 0, 5], [2, 3, 1])]
    for epoch, (first, second) in enumerate(splits):
        for cycler in (one, a, b):
            cycler.set_epoch(epoch)
        single = {i: one.pair(i).n for i in range(6)}
        split = {**{i: a.pair(i).n for i in first}, **{i: b.pair(i).n for i in second}}
        assert split == single, epoch
