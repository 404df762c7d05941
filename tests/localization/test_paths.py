"""Path attribution maths on a 2-layer toy network: IGI/IFI equal an explicit loop over the Riemann
steps, IGI is complete (sums to the objective's change), batched search = step-by-step search."""
import pytest
import torch
from torch import nn

from mllm_unlearn.localization.paths import Layout, PathSearchConfig, PathTask, predicting_positions, search_paths

SITES = ["blocks.0.down", "blocks.1.down"]


class Block(nn.Module):
    def __init__(self, width: int, neurons: int):
        super().__init__()
        self.up = nn.Linear(width, neurons)
        self.down = nn.Linear(neurons, width)

    def forward(self, x):
        return x + self.down(torch.nn.functional.gelu(self.up(x)))


class Toy(nn.Module):
    """Tokens (N, T, width) -> two residual FFN blocks -> a mixing of positions -> a score per token."""

    def __init__(self, width: int = 6, neurons: int = 10, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.blocks = nn.ModuleList([Block(width, neurons) for _ in range(2)])
        self.mix = nn.Linear(width, width)
        self.head = nn.Linear(width, 1)

    def forward(self, x):
        x = self.blocks[0](x)
        x = x + torch.tanh(self.mix(x.mean(dim=1, keepdim=True)))  # positions interact, as attention would
        x = self.blocks[1](x)
        return self.head(x).squeeze(-1)


def objective(model, batch):
    return (torch.tanh(model(batch["x"])) * batch["mask"]).sum(dim=1)


def toy_task():
    return PathTask(encode=lambda samples: {"x": torch.stack([s["x"] for s in samples]),
                                            "mask": torch.stack([s["mask"] for s in samples])},
                    repeat=lambda batch, times: {k: v.repeat_interleave(times, dim=0) for k, v in batch.items()},
                    objective=objective, layout=lambda batch: Layout(mask=batch["mask"].bool()))


def samples(count=5, tokens=4, width=6, seed=1):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(count):
        mask = torch.ones(tokens)
        mask[0] = 0  # one position not attributed (a prompt token, say)
        out.append({"x": torch.randn(tokens, width, generator=g), "mask": mask})
    return out


def brute_force_scores(model, sample, layer, earlier_paths, steps, score):
    """The same Riemann sum by hand: one forward/backward per step, ∂L/∂s_j = Σ_p a_pj ∂L/∂(s_j a_pj)."""
    mask = sample["mask"].bool()
    total = torch.zeros(model.blocks[layer].down.in_features, dtype=torch.float64)
    for k in range(1, steps + 1):
        alpha = k / steps
        captured = {}

        def hook(index):
            def scale(_module, args):
                a = args[0]
                factor = torch.ones_like(a)
                if index == layer:
                    factor[:, mask, :] = alpha
                else:
                    for j in earlier_paths[index]:
                        factor[:, mask, j] = alpha
                scaled = a * factor
                if index == layer:
                    scaled.retain_grad()
                    captured["a"], captured["scaled"] = a, scaled
                return (scaled,)
            return scale

        handles = [model.blocks[i].down.register_forward_pre_hook(hook(i)) for i in range(layer + 1)]
        model.zero_grad()
        objective(model, {"x": sample["x"][None], "mask": sample["mask"][None]}).sum().backward()
        for h in handles:
            h.remove()
        per_position = (captured["a"] * captured["scaled"].grad)[0]  # (T, neurons)
        gate_grad = per_position[mask].sum(dim=0).double()
        total += gate_grad if score == "ig" else gate_grad ** 2
    return total / steps


@pytest.mark.parametrize("score", ["ig", "fisher"])
def test_scores_equal_an_explicit_loop_over_the_steps(score):
    torch.manual_seed(0)
    model, data = Toy(), samples()
    cfg = PathSearchConfig(steps=4, top_k=3, score=score, batch_size=3)
    from mllm_unlearn.localization import paths as P

    # Layer 0 (no earlier path) and layer 1 (with the found layer-0 path scaled along).
    result = search_paths(model, SITES, data, toy_task(), cfg)
    for n, sample in enumerate(data):
        for layer in range(2):
            earlier = [result.neurons[n][i].tolist() for i in range(layer)]
            expected = brute_force_scores(model, sample, layer, earlier, 4, score)
            modules = [model.get_submodule(s) for s in SITES]
            masks = [torch.zeros(1, 10, dtype=torch.bool) for _ in range(layer)]
            for i in range(layer):
                masks[i][0, result.neurons[n][i]] = True
            batch = toy_task().repeat(toy_task().encode([sample]), 4)
            grads = P.gate_gradients(model, modules, layer, batch, toy_task(), torch.arange(1, 5) / 4.0,
                                     [m.repeat_interleave(4, dim=0) for m in masks])
            got = P._reduce(grads, score).double()
            torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-6)
            # The chosen neurons are the top-k positive ones of these scores.
            top = sorted(torch.sort(-expected, stable=True).indices[:3].tolist())
            assert result.neurons[n][layer].tolist() == [j for j in top if expected[j] > 0]
            torch.testing.assert_close(result.scores[n][layer].double(), expected[result.neurons[n][layer]],
                                       rtol=1e-4, atol=1e-6)


def test_integrated_gradients_are_complete():
    # Σ_j IG_j = L(sample) − L(layer-0 neurons zeroed at the attributed positions), as m grows.
    from mllm_unlearn.localization import paths as P

    model, sample = Toy(), samples(count=1)[0]
    task = toy_task()
    modules = [model.get_submodule(s) for s in SITES]
    steps = 400
    batch = task.repeat(task.encode([sample]), steps)
    ig = P._reduce(P.gate_gradients(model, modules, 0, batch, task, torch.arange(1, steps + 1) / steps, []), "ig")
    with torch.no_grad():
        full = objective(model, task.encode([sample]))
        mask = sample["mask"].bool()
        handle = modules[0].register_forward_pre_hook(lambda _m, args: (args[0] * (~mask)[None, :, None],))
        baseline = objective(model, task.encode([sample]))
        handle.remove()
    assert float(ig.sum()) == pytest.approx(float(full - baseline), rel=5e-3)


def test_fisher_scores_differ_across_neurons():
    # The released z-score made Σ_k z_k² = m − 1 for every neuron; squared gradients do not.
    result = search_paths(Toy(), SITES, samples(count=2), toy_task(), PathSearchConfig(score="fisher", top_k=10))
    assert len(set(result.scores[0][0].tolist())) > 1


@pytest.mark.parametrize("score", ["ig", "fisher"])
def test_batched_search_gives_the_step_by_step_paths(score):
    model, data = Toy(seed=3), samples(count=7, seed=2)
    cfg = PathSearchConfig(steps=5, top_k=3, score=score, batch_size=4)
    batched = search_paths(model, SITES, data, toy_task(), cfg)
    looped = search_paths(model, SITES, data, toy_task(), cfg, step_by_step=True)
    assert [[t.tolist() for t in s] for s in batched.neurons] == [[t.tolist() for t in s] for s in looped.neurons]
    for a, b in zip(batched.scores, looped.scores):
        for x, y in zip(a, b):
            torch.testing.assert_close(x, y, rtol=1e-4, atol=1e-6)
    union = batched.union()
    assert set(union) <= set(SITES)
    assert union[SITES[0]].tolist() == sorted({j for s in batched.neurons for j in s[0].tolist()})
    top2 = batched.union(max_per_site=2)
    assert all(len(v) <= 2 for v in top2.values())


def test_flattened_rows_layout_matches_the_batched_layout():
    # Qwen's vision tower sees (rows, width) with each image's rows in a block: same scores as (N, T, width).
    class Flat(nn.Module):
        def __init__(self, toy, tokens):
            super().__init__()
            self.toy, self.tokens = toy, tokens
            self.blocks = toy.blocks

        def forward(self, x):  # x: (N*T, width) -> per-row score
            n = x.shape[0] // self.tokens
            h = self.blocks[0](x)
            h = h + torch.tanh(self.toy.mix(h.reshape(n, self.tokens, -1).mean(dim=1)).repeat_interleave(self.tokens, 0))
            return self.toy.head(self.blocks[1](h)).squeeze(-1)

    toy, data = Toy(seed=5), samples(count=3, seed=4)
    for s in data:
        s["mask"] = torch.ones_like(s["mask"])
    flat = Flat(toy, tokens=4)
    flat_task = PathTask(
        encode=lambda ss: {"x": torch.cat([s["x"] for s in ss]), "rows": torch.full((len(ss),), 4)},
        repeat=lambda b, t: {"x": torch.cat([blk for blk in b["x"].split(4) for _ in range(t)]),
                             "rows": b["rows"].repeat_interleave(t)},
        objective=lambda m, b: torch.tanh(m(b["x"])).reshape(-1, 4).sum(dim=1),
        layout=lambda b: Layout(rows_per_example=b["rows"]))
    cfg = PathSearchConfig(steps=3, top_k=4, batch_size=2)
    a = search_paths(flat, SITES, data, flat_task, cfg)
    b = search_paths(toy, SITES, data, toy_task(), cfg)
    assert [[t.tolist() for t in s] for s in a.neurons] == [[t.tolist() for t in s] for s in b.neurons]


def test_answer_positions_are_those_predicting_answer_tokens():
    batch = {"labels": torch.tensor([[-100, -100, -100, 7, 8], [-100, -100, 5, 6, 9]]),
             "attention_mask": torch.tensor([[0, 1, 1, 1, 1], [1, 1, 1, 1, 1]])}
    assert predicting_positions(batch, "answer").tolist() == [[False, False, True, True, False],
                                                             [False, True, True, True, False]]
    assert predicting_positions(batch, "all").tolist() == batch["attention_mask"].bool().tolist()
    with pytest.raises(ValueError, match="positions must be one of"):
        predicting_positions(batch, "first")


def test_bad_search_settings_are_named():
    with pytest.raises(ValueError, match="score must be one of"):
        search_paths(Toy(), SITES, samples(1), toy_task(), PathSearchConfig(score="z"))
    with pytest.raises(ValueError, match="not a Linear down projection"):
        search_paths(Toy(), ["blocks.0"], samples(1), toy_task(), PathSearchConfig())
