"""Vision transformers: the tiny CPU default, timm models and torchvision ViTs."""
from __future__ import annotations

from pathlib import Path

import timm
import torch
import torchvision
from omegaconf import DictConfig

from moecl.backbones.attention import unfuse_attention
from moecl.backbones.base import Backbone, ImagePreprocess
from moecl.backbones.hub import from_hub
from moecl.backbones.registry import register
from moecl.backbones.weights import load_weights
from moecl.errors import ConfigError, check_range

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
TORCHVISION_VITS = ("vit_b_16", "vit_b_32", "vit_l_16", "vit_l_32", "vit_h_14")
PACKAGED_WEIGHTS = {"glyphs": Path(__file__).parent / "weights" / "tiny_vit_glyphs.safetensors"}
TIMM_VIT_TARGETS = ["qkv", "proj", "fc1", "fc2"]
TIMM_VIT_MLP = ["fc1", "fc2"]
TORCHVISION_VIT_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj", "mlp.0", "mlp.3"]
TORCHVISION_VIT_MLP = ["mlp.0", "mlp.3"]


@register("tiny_vit")
def tiny_vit(cfg: DictConfig) -> Backbone:
    """A small timm ViT for CPUs.

    No pretrained vision weights can be downloaded offline, so moecl ships weights for
    the default architecture pretrained on synthetic glyphs (``pretrained: glyphs``,
    made by scripts/pretrain_tiny_vit.py; letters and symbols, no digits).
    ``pretrained: null`` gives a seeded random init (``init_seed``); ``checkpoint``
    loads a local file.
    """
    for key in ("img_size", "patch_size", "embed_dim", "depth", "num_heads"):
        check_range(f"backbone.{key}", cfg[key], low=1, integer=True)
    if cfg.img_size % cfg.patch_size:
        raise ConfigError(f"backbone.img_size={cfg.img_size} must be a multiple of backbone.patch_size={cfg.patch_size}")
    if cfg.embed_dim % cfg.num_heads:
        raise ConfigError(f"backbone.embed_dim={cfg.embed_dim} must be a multiple of backbone.num_heads={cfg.num_heads}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.init_seed)
        model = timm.models.VisionTransformer(
            img_size=cfg.img_size,
            patch_size=cfg.patch_size,
            in_chans=3,
            num_classes=0,
            embed_dim=cfg.embed_dim,
            depth=cfg.depth,
            num_heads=cfg.num_heads,
            mlp_ratio=cfg.mlp_ratio,
            global_pool=cfg.global_pool,
        )
    checkpoint = cfg.checkpoint or (PACKAGED_WEIGHTS.get(cfg.pretrained) if cfg.pretrained else None)
    if cfg.pretrained and not cfg.checkpoint and checkpoint is None:
        raise ConfigError(f"backbone.pretrained={cfg.pretrained!r} is not packaged; choose one of: {', '.join(PACKAGED_WEIGHTS)}, or null")
    if checkpoint:
        load_weights(model, checkpoint, ignore_prefixes=("head.",))
    preprocess = ImagePreprocess(cfg.img_size, 3)
    blocks = [f"blocks.{i}" for i in range(cfg.depth)]
    return Backbone("tiny_vit", model, preprocess, model.num_features, blocks, TIMM_VIT_TARGETS, TIMM_VIT_MLP)


@register("timm")
def timm_backbone(cfg: DictConfig) -> Backbone:
    """Any timm model by name (``backbone.model``), weights from the hub or ``checkpoint``."""
    name = cfg.model
    if not name or not timm.is_model(name):
        raise ConfigError(f"backbone.model={name!r} is not a timm model; see timm.list_models()")
    use_hub = bool(cfg.pretrained) and not cfg.checkpoint
    if use_hub:
        model = from_hub(f"timm:{name}", lambda: timm.create_model(name, pretrained=True, num_classes=0))
    else:
        model = timm.create_model(name, pretrained=False, num_classes=0)
    if cfg.checkpoint:
        load_weights(model, cfg.checkpoint, ignore_prefixes=("head.", "fc.", "classifier."))
    data_cfg = timm.data.resolve_data_config({}, model=model)
    preprocess = ImagePreprocess(data_cfg["input_size"][-1], data_cfg["input_size"][0], data_cfg["mean"], data_cfg["std"])
    blocks = [f"blocks.{i}" for i in range(len(model.blocks))] if hasattr(model, "blocks") else []
    return Backbone(f"timm:{name}", model, preprocess, model.num_features, blocks, TIMM_VIT_TARGETS, TIMM_VIT_MLP)


@register("torchvision_vit")
def torchvision_vit(cfg: DictConfig) -> Backbone:
    """torchvision ViTs (``backbone.model`` in vit_b_16 ... vit_h_14); weights tag or ``checkpoint``."""
    name = cfg.model
    if name not in TORCHVISION_VITS:
        raise ConfigError(f"backbone.model={name!r} is not a torchvision ViT; choose one of: {', '.join(TORCHVISION_VITS)}")
    if cfg.pretrained and not cfg.checkpoint:
        model = from_hub(f"torchvision:{name}", lambda: torchvision.models.get_model(name, weights=cfg.pretrained))
    else:
        model = torchvision.models.get_model(name, weights=None)
    if cfg.checkpoint:
        load_weights(model, cfg.checkpoint)
    model.heads = torch.nn.Identity()
    unfuse_attention(model)
    blocks = [f"encoder.layers.{n}" for n, _ in model.encoder.layers.named_children()]
    preprocess = ImagePreprocess(model.image_size, 3, IMAGENET_MEAN, IMAGENET_STD)
    return Backbone(f"torchvision:{name}", model, preprocess, model.hidden_dim, blocks, TORCHVISION_VIT_TARGETS, TORCHVISION_VIT_MLP)
