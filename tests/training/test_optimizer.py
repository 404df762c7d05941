"""TrainConfig.fused_optimizer: torch's fused AdamW, the same update rule as the default kernel."""
import pytest
import torch

from mllm_unlearn.data.collate import Encoder
from mllm_unlearn.training import loop
from mllm_unlearn.training.losses import sequence_nll


def _trained(tiny_vlm, benchmark, **options):
    vlm = tiny_vlm()
    encoder = Encoder(vlm)
    cfg = loop.TrainConfig(lr=1e-3, max_steps=4, batch_size=2, schedule="constant", warmup_ratio=0.0, progress=False,
                           **options)
    loop.train(vlm.model, benchmark.forget_train[:8], lambda b: encoder.batch(b, train=True),
               lambda model, batch: sequence_nll(model, batch).mean(), cfg)
    return {n: p.detach().clone() for n, p in vlm.model.named_parameters()}


def test_fused_adamw_takes_the_same_steps_as_the_default_kernel(tiny_vlm, benchmark):
    initial = {n: p.detach().clone() for n, p in tiny_vlm().model.named_parameters()}
    plain = _trained(tiny_vlm, benchmark)
    fused = _trained(tiny_vlm, benchmark, fused_optimizer=True)
    moved = [n for n in plain if not torch.equal(plain[n], initial[n])]
    assert len(moved) > len(plain) // 2  # the comparison below is about real updates
    for name in plain:
        # Four steps of lr 1e-3 move weights by ~4e-3; the kernels differ only in float rounding.
        torch.testing.assert_close(fused[name], plain[name], rtol=0, atol=1e-5, msg=name)


def test_fused_adamw_is_refused_with_sharding(tiny_vlm, benchmark, monkeypatch):
    from mllm_unlearn.training import sharding

    monkeypatch.setattr(sharding, "sharding_active", lambda shard: True)  # as under a multi-process launch
    vlm = tiny_vlm()
    encoder = Encoder(vlm)
    with pytest.raises(ValueError, match="fused_optimizer is not supported with --shard fsdp"):
        loop.train(vlm.model, benchmark.forget_train[:2], lambda b: encoder.batch(b, train=True),
                   lambda model, batch: sequence_nll(model, batch).mean(),
                   loop.TrainConfig(fused_optimizer=True, shard="fsdp", progress=False))


@pytest.mark.parametrize("size, count", [(16, 2), (15, 2), (7, 3), (1, 2)])
def test_batch_share_splits_a_global_batch_and_weights_shares_to_its_mean(monkeypatch, size, count):
    # Under TrainConfig.shared_batches the processes' mean losses, times these factors and
    # averaged (as DDP averages gradients), are the global batch's mean.
    values = [float(v * v) for v in range(size)]
    shares = []
    for rank in range(count):
        monkeypatch.setattr(loop, "process_rank_and_count", lambda rank=rank: (rank, count))
        shares.append(loop.batch_share(values))
    covered = [v for share, weight in shares if weight for v in share]
    assert covered == values  # contiguous, in order, every item once
    averaged = sum(sum(share) / len(share) * weight for share, weight in shares) / count
    assert averaged == pytest.approx(sum(values) / size)
    assert all(share for share, _ in shares)  # a process never gets an empty batch


def test_batch_share_of_one_process_is_the_whole_batch():
    assert loop.batch_share([1, 2, 3]) == ([1, 2, 3], 1.0)


def test_max_steps_zero_means_zero_steps_not_unset(tiny_vlm, benchmark):
    """``max_steps=0`` is a number (the loop used to read it as "unset" and ran whole epochs); the
    options that reach the loop refuse it before any work (MethodConfig, FinetuneConfig)."""
    vlm = tiny_vlm()
    before = {n: p.detach().clone() for n, p in vlm.model.named_parameters()}
    encoder = Encoder(vlm)
    result = loop.train(vlm.model, benchmark.forget_train[:4], lambda b: encoder.batch(b, train=True),
                        lambda model, batch: sequence_nll(model, batch).mean(),
                        loop.TrainConfig(max_steps=0, epochs=1, batch_size=2, progress=False))
    assert result.steps == 0
    assert all(torch.equal(p, before[n]) for n, p in vlm.model.named_parameters())
