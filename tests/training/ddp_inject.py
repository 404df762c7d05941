"""Helper for test_distributed: a short knowledge injection: each stage's losses, learned-check scores and the cache key.

    python ddp_inject.py OUT.json WORLD_DIR
    accelerate launch --multi_gpu --num_processes 2 ddp_inject.py OUT.json WORLD_DIR
"""
import json
import sys

import torch

from mllm_unlearn.data import load_mllmu
from mllm_unlearn.jobs.prepare import benchmark_texts
from mllm_unlearn.models import TinySize
from mllm_unlearn.models.tiny import build_tiny_vlm, words_of
from mllm_unlearn.recipes import InjectionConfig, inject_knowledge
from mllm_unlearn.recipes.inject import injection_cache_key
from mllm_unlearn.utils import init_distributed, is_main_process

init_distributed(cpu=True)
torch.set_num_threads(1)
out, world_dir = sys.argv[1], sys.argv[2]
benchmark = load_mllmu(world_dir)
size = TinySize(hidden=32, layers=1, heads=2, ffn=64, vision_hidden=16, vision_layers=1, vision_heads=2, vision_ffn=32)
vlm = build_tiny_vlm("llava", words_of(benchmark_texts(benchmark)), size, seed=0, device="cpu")
# Every stage, the learned check (shared out over the processes) and its rehearsal weights included.
cfg = InjectionConfig(skill_people=4, skill_max_steps=4, skill_check_every=2, pretrain_epochs=1, finetune_epochs=1,
                      learned_check_every=3, learned_probe=8)
history = inject_knowledge(vlm, benchmark, cfg, progress=False)
if is_main_process():
    json.dump({"losses": {stage: record["losses"] for stage, record in history.items()},
               "learned": {stage: record.get("learned") for stage, record in history.items()},
               "key": injection_cache_key("llava", {}, "world", cfg)}, open(out, "w"))
