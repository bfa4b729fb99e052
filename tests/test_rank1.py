import math

import pytest
import torch
from torch import nn

from moecl.experts.rank1 import Rank1Linear, RankUsage
from moecl.kernels import rank_gate, sparse_rank_activation


def test_gate_matches_hand_computed_example():
    # p = (3, 4, 0, -5): ||p|| = sqrt(50); p_hat = (0.4243, 0.5657, 0, -0.7071)
    p = torch.tensor([[3.0, 4.0, 0.0, -5.0]], dtype=torch.float64)
    w = rank_gate(p, top_k=2, tau=0.5)
    n = math.sqrt(50)
    e3, e4 = math.exp(3 / n / 0.5), math.exp(4 / n / 0.5)
    torch.testing.assert_close(w, torch.tensor([[e3 / (e3 + e4), e4 / (e3 + e4), 0.0, 0.0]], dtype=torch.float64))
    # pruning at delta = 0.5 keeps only atom 2 (p_hat 0.566), without renormalising
    wp = rank_gate(p, top_k=2, tau=0.5, delta=0.5)
    torch.testing.assert_close(wp, torch.tensor([[0.0, e4 / (e3 + e4), 0.0, 0.0]], dtype=torch.float64))


def test_output_matches_hand_computed_example():
    x = torch.tensor([[1.0, 2.0]], dtype=torch.float64)
    a = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]], dtype=torch.float64)  # p = (1, 2, -1)
    b = torch.tensor([[1.0, 10.0, 100.0]], dtype=torch.float64)
    w = rank_gate(x @ a.t(), top_k=2, tau=1.0)
    n = math.sqrt(6)
    e1, e2 = math.exp(1 / n), math.exp(2 / n)
    expected = 1.0 * e1 / (e1 + e2) * 1 + 2.0 * e2 / (e1 + e2) * 10
    assert w[0, 2] == 0
    y = sparse_rank_activation(x, a, b, top_k=2, tau=1.0)
    assert y.item() == pytest.approx(expected)
    base = torch.tensor([[0.5, -0.5]], dtype=torch.float64)
    y_full = sparse_rank_activation(x, a, b, top_k=2, tau=1.0, base_weight=base, base_bias=torch.tensor([3.0], dtype=torch.float64))
    assert y_full.item() == pytest.approx(expected + 0.5 - 1.0 + 3.0)


def test_no_token_uses_more_than_k_atoms():
    torch.manual_seed(0)
    w = rank_gate(torch.randn(500, 37), top_k=5, tau=0.01)
    assert int((w > 0).sum(-1).max()) <= 5
    torch.testing.assert_close(w.sum(-1), torch.ones(500))


def make_layer(**kw) -> Rank1Linear:
    torch.manual_seed(0)
    return Rank1Linear(nn.Linear(12, 6), top_k=kw.pop("top_k", 3), tau=kw.pop("tau", 0.1), delta=kw.pop("delta", 0.2), **kw)


def test_growth_freezes_earlier_atoms_and_gradients_reach_only_current_ones():
    layer = make_layer()
    layer.add_atoms(0, 4)
    nn.init.normal_(layer.B["task0"])
    layer.add_atoms(1, 4)
    assert layer.num_atoms == 8
    assert [n for n, p in layer.named_parameters() if p.requires_grad] == ["A.task1", "B.task1"]
    old = {k: v.detach().clone() for k, v in layer.state_dict().items() if "task0" in k}
    layer.train()
    opt = torch.optim.AdamW([p for p in layer.parameters() if p.requires_grad], lr=0.1)
    for _ in range(3):
        opt.zero_grad()
        layer(torch.randn(16, 12)).pow(2).sum().backward()
        opt.step()
    assert layer.A["task0"].grad is None and layer.B["task0"].grad is None
    assert layer.B["task1"].grad is not None and layer.B["task1"].grad.abs().sum() > 0
    for k, v in old.items():
        assert torch.equal(layer.state_dict()[k], v)


def test_first_task_atoms_leave_the_layer_unchanged():
    layer = make_layer().eval()
    x = torch.randn(9, 12)
    before = layer(x)
    layer.add_atoms(0, 4)
    torch.testing.assert_close(layer(x), before, atol=0, rtol=0)


def test_new_zero_atoms_change_outputs_only_through_the_shared_gate():
    # B_new = 0, so new atoms add nothing themselves; but they share the normalisation,
    # the top-k budget and the softmax with the old atoms (design.md: old atoms "keep
    # competing"), so the old atoms' weights are re-distributed, never their directions.
    layer = make_layer().eval()
    layer.add_atoms(0, 4)
    nn.init.normal_(layer.B["task0"])
    layer.add_atoms(1, 4)
    x = torch.randn(9, 12)
    a_all = torch.cat([layer.A["task0"], layer.A["task1"]])
    p = x @ a_all.t()
    w = rank_gate(p, top_k=3, tau=0.1, delta=0.2)
    expected = layer.base_layer(x) + (p[:, :4] * w[:, :4]) @ layer.B["task0"].t()
    torch.testing.assert_close(layer(x), expected)


def test_pruning_changes_outputs_only_at_evaluation_unless_asked():
    x = torch.randn(20, 12)
    outs = {}
    for prune_train in (False, True):
        layer = make_layer(delta=0.3, prune_in_training=prune_train)
        layer.add_atoms(0, 6)
        nn.init.normal_(layer.B["task0"])
        unpruned = layer.base_layer(x) + sparse_rank_activation(x, layer.A["task0"], layer.B["task0"], top_k=3, tau=0.1)
        layer.train()
        outs[prune_train] = (layer(x), unpruned, layer.eval()(x))
    train_out, unpruned, eval_out = outs[False]
    torch.testing.assert_close(train_out, unpruned)
    assert not torch.allclose(eval_out, unpruned)
    train_pruned, _, eval_pruned = outs[True]
    torch.testing.assert_close(train_pruned, eval_pruned)


def test_usage_counts_top_k_membership():
    usage = RankUsage(4)
    p = torch.tensor([[1.0, 2.0, 3.0, -1.0], [3.0, 2.0, 1.0, -1.0]])
    layer = Rank1Linear(nn.Linear(4, 1), top_k=2, tau=0.1)
    usage.update(*layer._selection(p, None))
    assert usage.utilisation() == pytest.approx([0.5, 1.0, 0.5, 0.0])
    assert usage.active_ranks_per_token() == pytest.approx(2.0)
    # load per atom (1, 2, 1, 0): mean 1, population std sqrt(0.5)
    assert usage.load_cv() == pytest.approx(math.sqrt(0.5))
