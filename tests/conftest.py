"""Shared fixtures: a small built-in world and tiny models of each family."""
from __future__ import annotations

import hashlib
import os

import pytest
import torch

from mllm_unlearn.data import WorldConfig, generate_world, load_mllmu
from mllm_unlearn.jobs.prepare import benchmark_texts
from mllm_unlearn.models import TinySize
from mllm_unlearn.models.tiny import build_tiny_vlm, words_of

# OMP_NUM_THREADS (set by whoever shares the CPU with other jobs) wins over the default: 2 threads,
# or 1 in each of pytest-xdist's workers (make test runs one worker per core).
torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1" if os.environ.get("PYTEST_XDIST_WORKER") else "2")))
# Without validation people (tests/test_sweep.py adds them to its own world): the shared world,
# its vocabulary and so every tiny model built from it stay as they were.
SMALL_WORLD = WorldConfig(fictitious=20, real_world=4, seed=0, validation_percent=0)
# Two vision layers: LLaVA reads the second-to-last one's output (vision_feature_layer=-2), so
# with one layer its vision tower would feed the language model nothing but the embeddings.
SMALL_SIZE = TinySize(hidden=64, layers=2, heads=2, ffn=128, vision_hidden=32, vision_layers=2, vision_heads=2,
                      vision_ffn=64)
FAMILIES = ("llava", "qwen2-vl", "qwen2.5-vl")


@pytest.fixture(scope="session")
def world_dir(tmp_path_factory):
    return generate_world(tmp_path_factory.mktemp("world") / "mllmu", SMALL_WORLD)


@pytest.fixture(scope="session")
def benchmark(world_dir):
    return load_mllmu(world_dir, forget_percent=10)


@pytest.fixture(scope="session")
def words(benchmark):
    return words_of(benchmark_texts(benchmark))


@pytest.fixture
def tiny_vlm(words):
    def build(family: str = "llava", seed: int = 0):
        return build_tiny_vlm(family, words, SMALL_SIZE, seed=seed)

    return build


def weights_hash(model) -> str:
    """SHA-256 over every named tensor of the state dict: equal iff no weight changed."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


@pytest.fixture(scope="session")
def published_mllmu_dir(tmp_path_factory):
    """A small MLLMU-Bench download in the published layout and its quirks (tests/data/mllmu_published.py)."""
    from tests.data.mllmu_published import write_published_mllmu

    return write_published_mllmu(tmp_path_factory.mktemp("published") / "MLLMU-Bench")
