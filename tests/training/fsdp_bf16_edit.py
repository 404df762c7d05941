"""Helper for test_sharding: GA on a bf16 tiny model, its edit written to OUT.pt (main process).

    python fsdp_bf16_edit.py OUT.pt PER_PROCESS_BATCH WORLD_DIR
    torchrun --nproc_per_node 2 fsdp_bf16_edit.py OUT.pt PER_PROCESS_BATCH WORLD_DIR fsdp

Saves the bf16 weights before, the edit's new values (whole tensors, as stored), the losses, and
whether the caller's model came back bitwise unchanged and still in bf16.
"""
import sys

import torch

from mllm_unlearn.data import load_mllmu
from mllm_unlearn.interventions import WeightDelta
from mllm_unlearn.jobs.prepare import benchmark_texts
from mllm_unlearn.methods import MethodConfig, get_method
from mllm_unlearn.models import TinySize
from mllm_unlearn.models.tiny import build_tiny_vlm, words_of
from mllm_unlearn.utils import init_distributed, is_main_process, process_rank_and_count

torch.set_num_threads(1)
out, batch_size, world_dir = sys.argv[1], int(sys.argv[2]), sys.argv[3]
shard = sys.argv[4] if len(sys.argv) > 4 else None
init_distributed(cpu=True)
benchmark = load_mllmu(world_dir, forget_percent=10)
# Uneven sizes on purpose (FSDP2 pads the last shard), as in fsdp_edit.py.
size = TinySize(hidden=48, layers=2, heads=3, ffn=96, vision_hidden=32, vision_layers=2, vision_heads=2, vision_ffn=64)
vlm = build_tiny_vlm("llava", words_of(benchmark_texts(benchmark)), size, seed=0, device="cpu")
vlm.model.to(torch.bfloat16)
vlm.dtype = torch.bfloat16
before = {n: p.detach().clone() for n, p in vlm.model.named_parameters()}
# lr 1e-5: most AdamW updates are below bf16's resolution of the weights (only fp32 masters keep them).
cfg = MethodConfig(lr=1e-5, max_steps=3, batch_size=batch_size, schedule="constant", warmup_ratio=0.0, seed=0,
                   progress=False, shard=shard)
edit = get_method("ga").unlearn(vlm, benchmark.forget_train[:16], [], cfg)
assert isinstance(edit, WeightDelta)
after = dict(vlm.model.named_parameters())
if is_main_process():
    torch.save({"before": before, "new": edit.new_values(before), "losses": edit.meta["losses"],
                "restored": all(p.dtype == torch.bfloat16 and torch.equal(p, before[n]) for n, p in after.items()),
                "processes": process_rank_and_count()[1]}, out)
