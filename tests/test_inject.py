import pytest
import torch
import torchvision
from omegaconf import OmegaConf
from torch import nn

from moecl.backbones import Backbone, ImagePreprocess, build_backbone
from moecl.backbones.attention import UnfusedMultiheadAttention, unfuse_attention
from moecl.errors import ConfigError
from moecl.experts.inject import find_targets, inject, wrapped_layers
from moecl.experts.lora import LoRALinear
from moecl.experts.rank1 import Rank1Linear


def tiny_vit(**kw) -> Backbone:
    cfg = dict(name="tiny_vit", pretrained=None, checkpoint=None, init_seed=0, img_size=16, patch_size=4, embed_dim=32, depth=2, num_heads=2, mlp_ratio=2.0, global_pool="avg")
    cfg.update(kw)
    return build_backbone(OmegaConf.create(cfg))


def small_torchvision_vit() -> Backbone:
    model = torchvision.models.VisionTransformer(image_size=16, patch_size=8, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64)
    model.heads = nn.Identity()
    unfuse_attention(model)
    return Backbone("tv", model, ImagePreprocess(16, 3), 32, [], ["q_proj", "k_proj", "v_proj", "out_proj", "mlp.0", "mlp.3"])


def test_unfused_attention_matches_multihead_attention():
    torch.manual_seed(0)
    for batch_first in (True, False):
        mha = nn.MultiheadAttention(24, 3, batch_first=batch_first).eval()
        x = torch.randn(2, 5, 24) if batch_first else torch.randn(5, 2, 24)
        pad = torch.tensor([[False] * 5, [False, False, False, True, True]])
        ref = mha(x, x, x, need_weights=False, key_padding_mask=pad)[0]
        out = UnfusedMultiheadAttention(mha).eval()(x, x, x, key_padding_mask=pad)[0]
        torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


def test_targets_match_name_endings_and_regex():
    bb = tiny_vit()
    names = find_targets(bb.model, ["qkv", "fc2"])
    assert names == ["blocks.0.attn.qkv", "blocks.0.mlp.fc2", "blocks.1.attn.qkv", "blocks.1.mlp.fc2"]
    assert find_targets(bb.model, r"blocks\.1\..*fc1") == ["blocks.1.mlp.fc1"]


def test_no_matching_layer_lists_the_layers_it_has():
    with pytest.raises(ConfigError) as err:
        find_targets(tiny_vit().model, ["nope"])
    msg = str(err.value)
    assert "nope" in msg and "blocks.*.attn.qkv" in msg and "\n" not in msg


@pytest.mark.parametrize("make_backbone", [tiny_vit, small_torchvision_vit])
@pytest.mark.parametrize("expert", ["lora", "rank1"])
def test_zero_initialised_experts_leave_outputs_unchanged(make_backbone, expert):
    torch.manual_seed(0)
    bb = make_backbone().eval()
    x = torch.rand(3, 1, 8, 8)
    before = bb(x)
    if expert == "lora":
        wrappers = inject(bb.model, bb.default_targets, lambda m: LoRALinear(m, rank=4))
    else:
        wrappers = inject(bb.model, bb.default_targets, lambda m: Rank1Linear(m, top_k=2, tau=0.1, delta=0.2))
        for w in wrappers.values():
            w.add_atoms(0, 4)
    # every attention and MLP projection is wrapped, MultiheadAttention's included
    assert len(wrappers) == len(bb.default_targets) * 2
    torch.testing.assert_close(bb(x), before, atol=0, rtol=0)
    # and the experts are really on the forward path: a nonzero B changes the output
    for w in wrappers.values():
        for p in (w.lora_B,) if expert == "lora" else w.B.values():
            nn.init.normal_(p, std=0.1)
    assert not torch.allclose(bb(x), before)


def test_wrapped_layers_finds_every_wrapper():
    bb = tiny_vit()
    inject(bb.model, ["fc1"], lambda m: LoRALinear(m, rank=2))
    assert sorted(wrapped_layers(bb.model, LoRALinear)) == ["blocks.0.mlp.fc1", "blocks.1.mlp.fc1"]
    assert all(not p.requires_grad for n, p in bb.named_parameters() if "lora_" not in n)


def test_experts_follow_the_mode_while_pretrained_modules_stay_in_eval():
    bb = tiny_vit()
    inject(bb.model, ["fc1"], lambda m: LoRALinear(m, rank=2, dropout=0.5))
    bb.train()
    wrappers = wrapped_layers(bb.model, LoRALinear)
    assert all(w.training for w in wrappers.values())
    assert not bb.model.blocks[0].attn.training and not bb.model.training
    bb.eval()
    assert not any(w.training for w in wrappers.values())
