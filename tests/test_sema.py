"""SEMA: descriptors, the expansion rule, growth limits, freezing, the deeper-layer re-check."""
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from moecl.backbones import build_backbone
from moecl.experts.adapters import AdapterPool, RepresentationDescriptor
from moecl.methods import build_method
from moecl.methods.sema import SEMA
from moecl.run import compose_config, run


def fit_descriptor(rd, data, steps=300):
    opt = torch.optim.Adam(rd.parameters(), lr=0.01)
    for _ in range(steps):
        opt.zero_grad()
        rd.loss(data).mean().backward()
        opt.step()
    with torch.no_grad():
        rd.record(rd.loss(data))


def test_descriptor_z_is_low_in_distribution_and_high_when_shifted():
    g = torch.Generator().manual_seed(0)
    basis = torch.randn(4, 32, generator=g)
    sample = lambda n: torch.randn(n, 4, generator=g) @ basis + 0.05 * torch.randn(n, 32, generator=g)  # noqa: E731
    rd = RepresentationDescriptor(32, 8, buffer_size=500)
    fit_descriptor(rd, sample(400))
    with torch.no_grad():
        z_same = rd.zscore(rd.loss(sample(200))).mean()
        shifted = sample(200) + 2.0 * torch.randn(1, 32, generator=g)  # off the learned subspace
        z_shift = rd.zscore(rd.loss(shifted)).mean()
    assert z_same < 1.5 < 5.0 < z_shift


def test_ring_buffer_keeps_the_last_losses():
    rd = RepresentationDescriptor(4, 2, buffer_size=5)
    rd.record(torch.arange(7.0))
    assert sorted(rd.losses.tolist()) == [2.0, 3.0, 4.0, 5.0, 6.0] and int(rd.filled) == 7


def small_sema(*overrides):
    cfg = compose_config(["method=sema", *overrides])
    return build_method(cfg.method, build_backbone(cfg.backbone), 10)


def loader():
    return DataLoader(TensorDataset(torch.rand(64, 1, 8, 8), torch.zeros(64, dtype=torch.long)), batch_size=32)


def test_layer_expands_only_when_every_descriptor_sees_a_shift():
    method = small_sema("method.expandable_layers=1", "method.threshold=2.0")
    method.before_experience(0, [0, 1])
    layer = method.expandable[0]
    pool = method.pools[layer]
    pool.add_adapter()  # a second adapter on the same layer
    data = loader()
    feats = []
    hook = pool.register_forward_pre_hook(lambda m, a: feats.append(a[0].mean(-2)))
    method._pass([], "detect", data)
    hook.remove()
    f = torch.cat(feats)

    def baseline(rd, scale):
        """Loss statistics as if ``rd`` had been trained on data whose losses are ``scale`` x these."""
        rd.filled.zero_()
        with torch.no_grad():
            rd.record(rd.loss(f) * scale)

    method.current_experience = 1
    baseline(pool.descriptors[0], 1.0)  # adapter 0 fits this data: z ~ |N(0, 1)|
    baseline(pool.descriptors[1], 0.01)  # adapter 1 does not: z huge
    assert method._first_shifted([layer], data) is None
    baseline(pool.descriptors[0], 0.01)  # now neither fits
    assert method._first_shifted([layer], data) == layer
    assert [d["expanded"] for d in method.decisions] == [False, True]
    assert method.decisions[0]["min_mean_z"] < 2.0 < method.decisions[1]["min_mean_z"]


@pytest.fixture(scope="module")
def always_expanding(tmp_path_factory):
    """threshold 0: every layer is 'shifted' every task, so every check expands."""
    snapshots = []
    original = SEMA.after_experience

    def snapshot(self, experience, loader):
        original(self, experience, loader)
        snapshots.append({k: v.clone() for k, v in self.state_dict().items()})

    SEMA.after_experience = snapshot
    try:
        cfg = compose_config(["method=sema", "scenario=shifted_digits", "scenario.num_experiences=3",
                              "scenario.domains=[original,inverted,original]", "method.threshold=0.0",
                              "trainer.max_epochs=1", "method.rd_epochs=1", "trainer.progress_bar=false", "print_report=false"])
        metrics = run(cfg, run_dir=tmp_path_factory.mktemp("sema"))
    finally:
        SEMA.after_experience = original
    return metrics, snapshots


def test_at_most_one_new_adapter_per_layer_per_task_and_the_deeper_recheck(always_expanding):
    metrics, _ = always_expanding
    per_exp = metrics["experts"]["per_experience"]
    counts = [e["adapters_per_layer"] for e in per_exp]
    for before, after in zip(counts, counts[1:]):
        assert all(0 <= after[k] - before[k] <= 1 for k in after)
    # task 2: the shallowest expandable layer expands, then the deeper ones are re-checked
    # on the grown model (one detection pass per expansion) and expand in turn
    decisions = per_exp[1]["expansion_decisions"]
    assert [d["layer"] for d in decisions] == ["blocks.1", "blocks.2", "blocks.3"]
    assert all(d["expanded"] for d in decisions)
    assert counts[-1] == {"blocks.0": 1, "blocks.1": 3, "blocks.2": 3, "blocks.3": 3}
    assert (metrics["params"]["trainable_per_experience"][1] > metrics["params"]["trainable_per_experience"][0] / 10)


def test_earlier_adapters_descriptors_and_router_rows_are_unchanged(always_expanding):
    _, snapshots = always_expanding
    first, last = snapshots[0], snapshots[-1]
    old = [k for k in first if any(f".{part}.0." in k for part in ("adapters", "descriptors", "router"))]
    assert len(old) > 10
    for k in old:
        assert torch.equal(first[k], last[k]), k


def test_expansion_plot_and_decisions_are_reported(tmp_path):
    metrics = run(compose_config(["method=sema", "scenario=shifted_digits", "scenario.num_experiences=2",
                                  "scenario.domains=[original,inverted]", "trainer.max_epochs=1", "method.rd_epochs=1",
                                  "trainer.progress_bar=false", "print_report=false"]), run_dir=tmp_path)
    assert (tmp_path / "expansion.png").is_file()
    decision = metrics["experts"]["per_experience"][1]["expansion_decisions"][0]
    assert set(decision) == {"experience", "layer", "min_mean_z", "adapters", "expanded"}


def test_adapter_pool_starts_as_the_mlp():
    mlp = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.GELU(), torch.nn.Linear(16, 8))
    pool = AdapterPool(mlp, 8, 4, 2, 10)
    x = torch.randn(2, 5, 8)
    ref = mlp(x)
    pool.add_adapter()
    torch.testing.assert_close(pool(x), ref, atol=0, rtol=0)


def test_activated_params_count_every_adapter_and_router_column_but_no_descriptor():
    mlp = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.GELU(), torch.nn.Linear(16, 8))
    pool = AdapterPool(mlp, 8, 2, 2, 10)
    assert pool.activated_params() == 0
    pool.add_adapter()
    pool.add_adapter()
    # per adapter: down 8*2+2, up 2*8+8 = 42; per router column 8+1; descriptors excluded
    assert pool.activated_params() == 2 * 42 + 2 * 9
