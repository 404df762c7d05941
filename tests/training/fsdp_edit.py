"""Helper for test_sharding: each method's edit on a tiny model, written to OUT.pt (main process).

    python fsdp_edit.py OUT.pt METHODS PER_PROCESS_BATCH WORLD_DIR MASK_FILE
    torchrun --nproc_per_node 2 fsdp_edit.py OUT.pt METHODS PER_PROCESS_BATCH WORLD_DIR MASK_FILE fsdp

METHODS is comma-separated. Per method: the edit's weight tensors, the losses, whether the
caller's model came back bitwise unchanged, and how many elements of each parameter this
process held while training (sharded: its slice). MMUnlearner saves its saliency mask to
MASK_FILE in the unsharded run and reads it in the sharded one: the mask is a Fisher over
mini-batches of the per-process batch size, so only a shared mask makes the runs comparable.
"""
import hashlib
import sys

import torch

from mllm_unlearn.data import load_mllmu
from mllm_unlearn.data.collate import Encoder
from mllm_unlearn.interventions import CompositeEdit, WeightDelta
from mllm_unlearn.jobs.prepare import benchmark_texts
from mllm_unlearn.localization.statistics import collect_neuron_statistics
from mllm_unlearn.methods import MethodConfig, get_method
from mllm_unlearn.methods.base import item_batches
from mllm_unlearn.methods.mllmeraser import Moments
from mllm_unlearn.models import TinySize
from mllm_unlearn.models.tiny import build_tiny_vlm, words_of
from mllm_unlearn.training import sequence_nll, sharding
from mllm_unlearn.training.fisher import diagonal_fisher
from mllm_unlearn.utils import init_distributed, is_main_process, process_rank_and_count

torch.set_num_threads(1)
out, methods, batch_size, world_dir, mask_file = sys.argv[1], sys.argv[2].split(","), int(sys.argv[3]), sys.argv[4], \
    sys.argv[5]
shard = sys.argv[6] if len(sys.argv) > 6 else None
init_distributed(cpu=True)
benchmark = load_mllmu(world_dir, forget_percent=10)
# Uneven sizes (vocabulary rows, 3 heads of 16) on purpose: FSDP2 pads the last shard.
size = TinySize(hidden=48, layers=2, heads=3, ffn=96, vision_hidden=32, vision_layers=2, vision_heads=2, vision_ffn=64)
vlm = build_tiny_vlm("llava", words_of(benchmark_texts(benchmark)), size, seed=0, device="cpu")


def weights_hash(model: torch.nn.Module) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().contiguous().numpy().tobytes())
    return digest.hexdigest()


results = {}
for name in methods:
    before = weights_hash(vlm.model)
    method = get_method(name)
    held: dict[str, tuple[int, int]] = {}
    bind = method.bind

    def record_and_bind(model: torch.nn.Module, bind=bind, held=held) -> None:
        held.update(sharding.local_numel(model))
        bind(model)

    method.bind = record_and_bind
    extra = {"mip-editor": {"path_samples": 4, "path_batch_size": 2, "steps": 2, "top_k": 2, "layer": 1},
             "mmunlearner": {"mask": "language", ("mask_file" if shard else "save_mask"): mask_file}}.get(name, {})
    cfg = MethodConfig(lr=1e-1 if name == "mip-editor" else 1e-2, max_steps=3, batch_size=batch_size,
                       schedule="constant", seed=0, progress=False, shard=shard, extra=extra,
                       # Gradient checkpointing (on for real checkpoints) inside FSDP2 units, and off.
                       gradient_checkpointing=name in ("graddiff", "rmu", "mmunlearner"))
    # 16 forget items (8 with images, MMUnlearner's): whole global batches of 8, no padding.
    edit = method.unlearn(vlm, benchmark.forget_train[:16], benchmark.retain_train[:16], cfg)
    parts = edit.parts if isinstance(edit, CompositeEdit) else [edit]
    base = dict(vlm.model.named_parameters())  # restored: the values the edit starts from
    # Whole new values, also of tensors stored as a few changed columns (MIP-Editor's).
    results[name] = {"tensors": {n: t for part in parts if isinstance(part, WeightDelta)
                                 for n, t in part.new_values(base).items()},
                     "losses": edit.meta.get("losses"), "restored": weights_hash(vlm.model) == before, "held": held,
                     "plain_parameters": all(type(p) is torch.nn.Parameter for p in vlm.model.parameters()),
                     "paths": edit.meta.get("mip_editor", {}).get("paths")}
# Localisation passes share their samples out over the processes: MMUnlearner's Fisher with mini-batches
# of 4 in both runs (MIP-Editor's path search is checked through its paths above).
encoder = Encoder(vlm)
params = {n: p for n, p in vlm.model.named_parameters() if ".language_model.layers." in n and n.endswith("proj.weight")}
fisher = diagonal_fisher(vlm.model, item_batches(benchmark.forget_train[:24], encoder, 4, vlm.device),
                         lambda m, b: sequence_nll(m, b).mean(), params)
# MANU's neuron statistics (language and vision FFN neurons), batches shared out, sums merged.
statistics = collect_neuron_statistics(vlm.model, item_batches(benchmark.forget_train[:24], encoder, 4, vlm.device),
                                       vlm.adapter.lm_ffn_sites(vlm.model), vlm.adapter.vision_ffn_sites(vlm.model))
statistics = {name: {"count": site.count, **{k: getattr(site, k) for k in site.STATISTICS + ("mean",)}}
              for name, site in statistics.items()}
# MLLMEraser's moments (Σh, Σhhᵀ per layer): 5 batches of states, 3 on one process and 2 on the other
# (as its ``moments`` shares them out), all-reduced.
generator = torch.Generator().manual_seed(0)
states = [{0: torch.randn(5, 12, generator=generator), 3: torch.randn(5, 12, generator=generator)} for _ in range(5)]
rank, processes = process_rank_and_count()
moments = Moments()
for index, batch_states in enumerate(states):
    if index % processes == rank:
        moments.add(batch_states)
moments.all_reduce(torch.device("cpu"))
moments = {"count": moments.count, "sum": dict(moments.sum), "outer": dict(moments.outer)}
if is_main_process():
    torch.save({"results": results, "fisher": fisher, "statistics": statistics, "moments": moments,
                "processes": process_rank_and_count()[1]}, out)
# The processes exit normally (the package leaves the process group at exit): an abort at exit
# after sharded training fails the test (docs/known-issues.md#fsdp2-exit-abort).
