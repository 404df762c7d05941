"""Retain batches cycle through seeded shuffles of the whole retain set; the forget set defines an epoch."""
import math

import pytest

from mllm_unlearn.methods import MethodConfig, get_method
from mllm_unlearn.methods.base import RetainCycler


def _draws(cycler, batch_sizes):
    return [item for n in batch_sizes for item in cycler.take(n)]


def test_every_retain_item_is_drawn_once_before_any_twice_and_the_seed_fixes_the_stream():
    retain = list(range(23))
    stream = _draws(RetainCycler(retain, seed=3), [5] * 10)
    assert sorted(stream[:23]) == retain  # one full pass, no repeats
    assert sorted(stream[23:46]) == retain  # the next pass is again the whole set
    assert stream[23:46] != stream[:23]  # reshuffled between passes
    assert stream == _draws(RetainCycler(retain, seed=3), [5] * 10)
    assert stream != _draws(RetainCycler(retain, seed=4), [5] * 10)


def test_processes_draw_disjoint_slices_of_one_stream():
    retain = list(range(12))
    single = _draws(RetainCycler(retain, seed=0), [2] * 6)
    rank0 = RetainCycler(retain, seed=0, rank=0, world=2)
    rank1 = RetainCycler(retain, seed=0, rank=1, world=2)
    merged = [item for _ in range(3) for item in rank0.take(2) + rank1.take(2)]
    assert merged == single
    with pytest.raises(ValueError, match="at least one retain item"):
        RetainCycler([], seed=0)


def test_unlearning_covers_the_retain_set_within_ceil_retain_over_forget_epochs(benchmark, tiny_vlm, monkeypatch):
    drawn: list = []
    take = RetainCycler.take

    def recording_take(self, n):
        items = take(self, n)
        drawn.extend(items)
        return items

    monkeypatch.setattr(RetainCycler, "take", recording_take)
    forget, retain = benchmark.forget_train[:6], benchmark.retain_train[:20]
    epochs = math.ceil(len(retain) / len(forget))  # 4 forget epochs of 6 items: 24 retain draws
    runs = []
    for _ in range(2):
        drawn.clear()
        cfg = MethodConfig(epochs=epochs, batch_size=4, lr=1e-4, progress=False)
        get_method("graddiff").unlearn(tiny_vlm(), forget, retain, cfg)
        runs.append([id(i) for i in drawn])
    assert len(runs[0]) == epochs * len(forget)  # one retain item per forget item, across epochs
    assert {id(i) for i in retain} <= set(runs[0])  # every retain item was seen
    assert runs[0] == runs[1]  # same seed, same retain batches
