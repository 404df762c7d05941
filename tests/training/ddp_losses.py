"""Helper for test_distributed: train a tiny model a few steps and write the loss curve.

    python ddp_losses.py OUT.json PER_PROCESS_BATCH
    accelerate launch --num_processes 2 --cpu ddp_losses.py OUT.json PER_PROCESS_BATCH
"""
import json
import sys

import torch

from mllm_unlearn.data import load_mllmu
from mllm_unlearn.data.collate import Encoder
from mllm_unlearn.jobs.prepare import benchmark_texts
from mllm_unlearn.models import TinySize
from mllm_unlearn.models.tiny import build_tiny_vlm, words_of
from mllm_unlearn.training.loop import TrainConfig, train
from mllm_unlearn.training.losses import sequence_nll

torch.set_num_threads(1)
out, batch_size, world_dir = sys.argv[1], int(sys.argv[2]), sys.argv[3]
benchmark = load_mllmu(world_dir)
size = TinySize(hidden=32, layers=1, heads=2, ffn=64, vision_hidden=16, vision_layers=1, vision_heads=2, vision_ffn=32)
vlm = build_tiny_vlm("llava", words_of(benchmark_texts(benchmark)), size, seed=0, device="cpu")
encoder = Encoder(vlm)
items = benchmark.finetune_train[:64]
result = train(vlm.model, items, lambda b: encoder.batch(b, train=True), lambda m, b: sequence_nll(m, b).mean(),
               TrainConfig(lr=1e-3, max_steps=6, batch_size=batch_size, seed=0, progress=False))
from accelerate import PartialState  # noqa: E402 - after the work, as the launched script runs it

if PartialState().is_main_process:
    json.dump(result.losses, open(out, "w"))
