"""MoE-adapters: frozen past routers and experts, the autoencoder task selector, resume of routed methods."""
import pytest
import torch

from moecl.backbones import build_backbone
from moecl.methods import build_method
from moecl.run import run
from moecl.training.runner import ContinualRunner


def _method(fast_cfg, *overrides):
    cfg = fast_cfg("method=moe_adapters", *overrides)
    return build_method(cfg.method, build_backbone(cfg.backbone), 10)


def test_past_routers_and_frozen_experts_stay_unchanged(fast_cfg):
    method = _method(fast_cfg, "method.freeze_per_task=3")
    pool = next(iter(method.pools.values()))
    method.before_experience(0, [0, 1])
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.rand(32, 1, 8, 8), torch.randint(0, 2, (32,))), batch_size=16)
    opt = torch.optim.SGD([p for p in method.parameters() if p.requires_grad], lr=0.1)
    for block in method.pools.values():
        block.routers[0].counts = block.routers[0].new_counts()
    for x, y in loader:  # a few steps of task 0 so the router and experts move off their init
        opt.zero_grad()
        method.training_step((x, y), 0).backward()
        opt.step()
    method._freeze_most_used([block.routers[0].counts for block in method.pools.values()])
    frozen = method.frozen_experts()
    assert all(len(f) == 3 for f in frozen)
    method.before_experience(1, [2, 3])
    old_router = {k: v.clone() for k, v in pool.routers[0].state_dict().items()}
    old_experts = {e: [p.clone() for p in pool.adapters[e].parameters()] for e in frozen[0]}
    assert not any(p.requires_grad for p in pool.routers[0].parameters())
    assert all(p.requires_grad for p in pool.routers[1].weight.parameters())
    opt = torch.optim.SGD([p for p in method.parameters() if p.requires_grad], lr=0.1)
    for x, y in loader:
        opt.zero_grad()
        method.training_step((x, y + 2), 0).backward()
        opt.step()
    for k, v in pool.routers[0].state_dict().items():
        assert torch.equal(v, old_router[k]), k
    for e, params in old_experts.items():
        assert all(torch.equal(a, b) for a, b in zip(pool.adapters[e].parameters(), params))


def test_selector_picks_the_fitting_task_or_falls_back(fast_cfg):
    method = _method(fast_cfg)
    dim = method.backbone.feature_dim
    for t in range(2):
        method.before_experience(t, [2 * t, 2 * t + 1])
    # autoencoders that reproduce one half of the feature space each (identity on it, zero elsewhere)
    for t, ae in enumerate(method.selectors):
        torch.nn.init.zeros_(ae.net[0].bias)
        torch.nn.init.zeros_(ae.net[2].bias)
        ae.net[0].weight.data.zero_()
        ae.net[2].weight.data.zero_()
        half = slice(t * dim // 2, (t + 1) * dim // 2)
        hidden = ae.net[0].weight.shape[0]
        ae.net[0].weight.data[:hidden, half][range(hidden), range(hidden)] = 1.0
        ae.net[2].weight.data[half, :hidden][range(hidden), range(hidden)] = 1.0
        ae.threshold.fill_(0.01)
    first = torch.zeros(1, dim)
    first[0, :4] = 1.0
    second = torch.zeros(1, dim)
    second[0, dim // 2: dim // 2 + 4] = 1.0
    neither = torch.full((1, dim), 1.0)
    assert method.select_task(torch.cat([first, second, neither])).tolist() == [0, 1, -1]


def test_moe_adapters_end_to_end_reports_selection(fast_cfg, tmp_path):
    metrics = run(fast_cfg("method=moe_adapters"), run_dir=tmp_path)
    assert metrics["complete"] and metrics["accuracy_matrix"][0][0] > 50.0
    routing = metrics["experts"]["per_experience"][-1]["routing"]
    assert sum(routing["task_selection"].values()) == pytest.approx(1.0)
    assert routing["task_selection"]["right"] > 0.5 and routing["load_cv"] >= 0
    assert metrics["experts"]["per_experience"][-1]["routers"] == 5


@pytest.mark.parametrize("method", ["moe_adapters", "smora"])
def test_routed_methods_resume_to_the_same_result(fast_cfg, tmp_path, monkeypatch, method):
    cfg = fast_cfg(f"method={method}", "trainer.max_epochs=1")
    whole = run(cfg, run_dir=tmp_path / "whole")
    save = ContinualRunner._save

    def save_then_stop(self, experience, progress, complete):
        save(self, experience, progress, complete)
        if experience == 1:
            raise KeyboardInterrupt

    monkeypatch.setattr(ContinualRunner, "_save", save_then_stop)
    with pytest.raises(KeyboardInterrupt):
        run(cfg, run_dir=tmp_path / "cut")
    monkeypatch.setattr(ContinualRunner, "_save", save)
    resumed = run(cfg, run_dir=tmp_path / "cut")
    assert resumed["accuracy_matrix"] == whole["accuracy_matrix"]
    assert resumed["experts"] == whole["experts"]


def test_activated_params_are_one_routers_rows_and_its_top_k_adapters():
    from moecl.experts.adapter_mixture import TaskRoutedAdapters
    from moecl.experts.routing import Router

    mlp = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.GELU(), torch.nn.Linear(16, 8))
    pool = TaskRoutedAdapters(mlp, dim=8, bottleneck=2, num_experts=5, make_router=lambda: Router(8, top_k=2, noisy=True))
    assert pool.activated_params() == 0
    pool.add_task()
    pool.add_task()
    # one task's router scores 5 experts over 8 inputs (noise only in training); 2 adapters of 8*2+2 + 2*8+8
    assert pool.activated_params() == 5 * 8 + 2 * 42
