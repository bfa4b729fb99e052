"""The rank-wise family's gates, routers, balancing options and load statistics."""
import math

import pytest
import torch
from torch import nn

from moecl.experts.lora_mixture import LoRAMixtureLinear
from moecl.experts.rank1 import Rank1Linear, fly_gate
from moecl.experts.routing import Router, balance_loss, coefficient_of_variation, top_k_gate


def _router(weight: list[list[float]], top_k: int, **kwargs) -> Router:
    router = Router(len(weight[0]), top_k, **kwargs)
    router.add_experts(0, len(weight))
    with torch.no_grad():
        router.weight["task0"].copy_(torch.tensor(weight))
    return router


def _zero_base(d_in: int, d_out: int) -> nn.Linear:
    base = nn.Linear(d_in, d_out, bias=False)
    nn.init.zeros_(base.weight)
    return base


def test_router_gate_hand_computed():
    # scores = x W^T = (1, 3, 2): top-2 = experts 1 and 2, softmax over (3, 2)
    router = _router([[1.0, 0.0], [0.0, 1.0], [1.0, 0.5]], top_k=2, balance="none").eval()
    x = torch.tensor([[1.0, 3.0]])
    torch.testing.assert_close(router.scores(x), torch.tensor([[1.0, 3.0, 2.5]]))
    e3, e25 = math.exp(3.0), math.exp(2.5)
    torch.testing.assert_close(router(x), torch.tensor([[0.0, e3 / (e3 + e25), e25 / (e3 + e25)]]))


def test_router_gate_in_rank1_layer_hand_computed():
    # SMoRA: y = W0 x + B (p * g): atoms p = A x = (1, 2, -1); the router picks atoms 0 and 2
    layer = Rank1Linear(_zero_base(2, 1), top_k=2, tau=1.0, gate="router", router=Router(2, 2, balance="none"))
    layer.add_atoms(0, 3)
    with torch.no_grad():
        layer.A["task0"].copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]]))
        layer.B["task0"].copy_(torch.tensor([[1.0, 10.0, 100.0]]))
        layer.router.weight["task0"].copy_(torch.tensor([[2.0, 0.0], [0.0, 0.0], [1.0, 0.0]]))  # scores (2, 0, 1)
    layer.eval()
    e2, e1 = math.exp(2.0), math.exp(1.0)
    expected = 1.0 * e2 / (e2 + e1) * 1.0 + (-1.0) * e1 / (e2 + e1) * 100.0
    torch.testing.assert_close(layer(torch.tensor([[1.0, 2.0]])), torch.tensor([[expected]]))


def test_fly_gate_hand_computed():
    # FlyLoRA: p = A x = (1, -3, 2): the top-2 by |p| are atoms 1 and 2, each with weight 1
    layer = Rank1Linear(_zero_base(2, 1), top_k=2, tau=1.0, gate="fly")
    layer.add_atoms(0, 3)
    with torch.no_grad():
        layer.A["task0"].copy_(torch.tensor([[1.0, 0.0], [0.0, -1.0], [0.0, 2.0 / 3.0]]))
        layer.B["task0"].copy_(torch.tensor([[1.0, 10.0, 100.0]]))
    x = torch.tensor([[1.0, 3.0]])
    torch.testing.assert_close(fly_gate(x @ layer.A["task0"].t(), 2), torch.tensor([[0.0, 1.0, 1.0]]))
    torch.testing.assert_close(layer.eval()(x), torch.tensor([[-3.0 * 10.0 + 2.0 * 100.0]]))


@pytest.mark.parametrize("density", [0.05, 0.25])
def test_fly_projection_frozen_and_sparse_at_density(density):
    layer = Rank1Linear(nn.Linear(40, 8), top_k=2, tau=1.0, gate="fly", density=density)
    layer.add_atoms(0, 6)
    a = layer.A["task0"]
    assert not a.requires_grad and layer.B["task0"].requires_grad
    assert ((a != 0).sum(1) == round(density * 40)).all()
    before = a.clone()
    opt = torch.optim.SGD([p for p in layer.parameters() if p.requires_grad], lr=0.5)
    for _ in range(3):
        opt.zero_grad()
        layer.train()(torch.randn(16, 40)).pow(2).sum().backward()
        opt.step()
    assert torch.equal(layer.A["task0"], before)
    assert layer.B["task0"].abs().sum() > 0


def test_bias_balancing_changes_routing_not_scale():
    router = _router([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5]], top_k=1, balance="bias", bias_rate=0.5)
    x = torch.tensor([[2.0, 1.0]] * 4)  # every token prefers expert 0 (scores 2, 1, 1.5)
    router.train()
    first = router(x)
    assert (first.argmax(-1) == 0).all()
    # the overloaded expert's bias went down, the idle ones' up
    assert router.select_bias[0] < 0 < router.select_bias[1]
    for _ in range(3):
        gate = router(x)
    assert (gate.argmax(-1) != 0).all()  # routing moved...
    torch.testing.assert_close(gate.sum(-1), torch.ones(4))  # ...each token's weights still sum to 1
    # top_k = 2 with a bias that makes expert 2 win: its weight comes from the unbiased scores
    router2 = _router([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5]], top_k=2, balance="bias").eval()
    router2.select_bias = torch.tensor([0.0, -10.0, 10.0])
    g = router2(torch.tensor([[2.0, 1.0]]))
    e2, e15 = math.exp(2.0), math.exp(1.5)
    torch.testing.assert_close(g, torch.tensor([[e2 / (e2 + e15), 0.0, e15 / (e2 + e15)]]))


def test_load_statistics_on_an_imbalanced_batch():
    # 6 tokens to expert 0, 2 to expert 1, 0 to expert 2: load (6, 2, 0), mean 8/3
    router = _router([[1.0, 0.0], [0.0, 1.0], [-1.0, -1.0]], top_k=1, balance="none").eval()
    x = torch.tensor([[2.0, 1.0]] * 6 + [[0.0, 1.0]] * 2)
    router.counts = router.new_counts()
    router(x)
    assert router.counts.tolist() == [6.0, 2.0, 0.0]
    load = torch.tensor([6.0, 2.0, 0.0])
    expected = math.sqrt(((load - 8 / 3) ** 2).mean().item()) / (8 / 3)
    assert router.load_cv() == pytest.approx(expected)
    assert coefficient_of_variation(torch.ones(5)) == 0.0


def test_switch_loss_values():
    # uniform routing and probabilities: E * sum (1/E)(1/E) = 1; everything on one expert: E * P_0
    probs = torch.full((4, 4), 0.25)
    assert balance_loss(probs, torch.full((4,), 0.25), "switch").item() == pytest.approx(1.0)
    collapsed = torch.tensor([[0.7, 0.1, 0.1, 0.1]] * 4)
    assert balance_loss(collapsed, torch.tensor([1.0, 0.0, 0.0, 0.0]), "switch").item() == pytest.approx(4 * 0.7)
    # localized balancing: each group balanced on its own -> 1 per group, though the groups differ in mass
    grouped = torch.tensor([[0.4, 0.4, 0.1, 0.1]] * 4)
    assert balance_loss(grouped, torch.tensor([0.4, 0.4, 0.1, 0.1]), "switch", groups=2).item() == pytest.approx(2.0)
    assert balance_loss(grouped, torch.tensor([0.4, 0.4, 0.1, 0.1]), "cv", groups=2).item() == pytest.approx(0.0, abs=1e-6)
    assert balance_loss(grouped, torch.tensor([0.4, 0.4, 0.1, 0.1]), "cv", groups=1).item() > 0.3


def test_global_batch_gathers_load_over_micro_batches():
    w = [[1.0, 0.0], [0.0, 1.0]]
    a = torch.tensor([[1.0, 0.0]] * 4)  # micro-batch routed to expert 0 only
    b = torch.tensor([[0.0, 1.0]] * 4)  # ... to expert 1 only
    local, globl = _router(w, 1, balance="aux"), _router(w, 1, balance="global", window=2)
    for r in (local, globl):
        r.train()
        r(a)
        r(b)
    probs = torch.softmax(torch.tensor([[0.0, 1.0]] * 4), -1)
    # micro-batch: f = (0, 1); global batch of both micro-batches: f = (1/2, 1/2)
    assert local.aux_loss.item() == pytest.approx(2 * probs[0, 1].item())
    assert globl.aux_loss.item() == pytest.approx(1.0)


def test_top_k_gate_ignores_bias_for_values():
    scores = torch.tensor([[1.0, 2.0, 3.0]])
    torch.testing.assert_close(top_k_gate(scores, 3), torch.softmax(scores, -1))


def test_lora_mixture_matches_explicit_experts():
    torch.manual_seed(0)
    base = nn.Linear(6, 5)
    router = Router(6, 2, balance="none")
    layer = LoRAMixtureLinear(base, num_experts=3, rank=2, alpha=4.0, router=router).eval()
    with torch.no_grad():
        layer.B.normal_()
    x = torch.randn(7, 6)
    g = router(x)
    expected = base(x)
    for e in range(3):
        a, b = layer.A[2 * e: 2 * e + 2], layer.B[:, 2 * e: 2 * e + 2]
        expected = expected + g[:, e: e + 1] * (x @ a.t() @ b.t()) * 2.0
    torch.testing.assert_close(layer(x), expected)
    assert ((g > 0).sum(-1) == 2).all()


def test_router_rows_of_past_tasks_freeze():
    router = Router(4, 2)
    router.add_experts(0, 3)
    router.add_experts(1, 3)
    assert not router.weight["task0"].requires_grad and router.weight["task1"].requires_grad
    assert router.num_experts == 6 and router.select_bias.shape == (6,)
