"""open_clip backbones (image and text towers) and Hugging Face text encoders."""
from __future__ import annotations

import logging
from pathlib import Path

import open_clip
import torch
from omegaconf import DictConfig
from torch.nn import functional as F

from moecl.backbones.attention import unfuse_attention
from moecl.backbones.base import Backbone, ImagePreprocess
from moecl.backbones.hub import from_hub
from moecl.backbones.registry import register
from moecl.backbones.weights import load_weights
from moecl.errors import CheckpointError, ConfigError

CLIP_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj", "c_fc", "c_proj"]
CONFIG_DIR = Path(__file__).parent / "openclip_configs"
open_clip.add_model_config(CONFIG_DIR)  # moecl's own tiny architectures (e.g. moecl-tiny-clip)


class ClipBackbone(Backbone):
    """A CLIP model: ``forward(images)`` is the image embedding; ``encode_text`` the text one.

    The whole CLIP is ``model``, so experts can be injected into either tower by
    name: the image tower's modules start with ``visual.``, the text tower's with
    ``transformer.`` (``towers``).
    """

    def __init__(self, name: str, model: torch.nn.Module, preprocess: ImagePreprocess, tokenizer) -> None:
        blocks = [f"visual.transformer.resblocks.{i}" for i in range(len(model.visual.transformer.resblocks))]
        super().__init__(name, model, preprocess, model.text_projection.shape[1], blocks, CLIP_TARGETS, ["c_fc", "c_proj"])
        self.towers = {"image": "visual.", "text": "transformer."}
        self.tokenizer = tokenizer

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(self.preprocess(images))

    def tokenize(self, texts: list[str]) -> torch.Tensor:
        return self.tokenizer(texts)

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.model.encode_text(tokens)

    @property
    def logit_scale(self) -> torch.Tensor:
        return self.model.logit_scale.exp()


@register("openclip")
def openclip(cfg: DictConfig) -> ClipBackbone:
    """open_clip model ``backbone.model``; ``backbone.pretrained`` is a tag, a local file or a local folder."""
    if cfg.model not in open_clip.list_models():
        raise ConfigError(f"backbone.model={cfg.model!r} is not an open_clip architecture; see open_clip.list_models()")
    # open_clip logs every step of model creation on the root logger (and warns that
    # pretrained=None loads no weights, which is what was asked for).
    logging.disable(logging.WARNING)
    try:
        return _build_openclip(cfg)
    finally:
        logging.disable(logging.NOTSET)


def _build_openclip(cfg: DictConfig) -> ClipBackbone:
    pretrained = cfg.pretrained
    local = pretrained and Path(str(pretrained)).expanduser().exists()
    if pretrained and Path(str(pretrained)).expanduser().is_dir():
        found = sorted(p for p in Path(pretrained).expanduser().iterdir() if p.suffix in (".safetensors", ".bin", ".pt", ".pth"))
        if not found:
            raise CheckpointError(f"backbone.pretrained={pretrained!r} is a folder with no .safetensors/.bin/.pt weights")
        pretrained = str(found[0])
    if pretrained and not local:
        model = from_hub(f"open_clip:{cfg.model}:{pretrained}", lambda: open_clip.create_model(cfg.model, pretrained=pretrained))
    else:
        model = open_clip.create_model(cfg.model, pretrained=None)
        if pretrained:
            load_weights(model, pretrained)
    unfuse_attention(model)
    size = model.visual.image_size
    size = size[0] if isinstance(size, (tuple, list)) else size
    mean = getattr(model.visual, "image_mean", None) or open_clip.OPENAI_DATASET_MEAN
    std = getattr(model.visual, "image_std", None) or open_clip.OPENAI_DATASET_STD
    return ClipBackbone(f"openclip:{cfg.model}", model, ImagePreprocess(size, 3, tuple(mean), tuple(std)), open_clip.get_tokenizer(cfg.model))


class TextEncoderBackbone(Backbone):
    """A Hugging Face encoder (e.g. sentence-transformers MiniLM): mean-pooled, normalised embeddings.

    ``forward`` takes token ids (N, L) padded with the tokenizer's pad id.
    """

    def __init__(self, name: str, model: torch.nn.Module, tokenizer) -> None:
        layers = [f"encoder.layer.{i}" for i in range(model.config.num_hidden_layers)]
        super().__init__(name, model, torch.nn.Identity(), model.config.hidden_size, layers,
                         ["query", "key", "value", "attention.output.dense", "intermediate.dense", "output.dense"],
                         r".*layer\.\d+\.(intermediate|output)\.dense")
        self.tokenizer = tokenizer

    def tokenize(self, texts: list[str]) -> torch.Tensor:
        return self.tokenizer(texts, padding=True, truncation=True, return_tensors="pt")["input_ids"]

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        mask = (input_ids != self.tokenizer.pad_token_id).long()
        hidden = self.model(input_ids=input_ids, attention_mask=mask).last_hidden_state
        pooled = (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdim=True).clamp_min(1)
        return F.normalize(pooled, dim=-1)


@register("hf_text")
def hf_text(cfg: DictConfig) -> TextEncoderBackbone:
    """``backbone.model``: a local model folder or a hub name (online only)."""
    from transformers import AutoModel, AutoTokenizer

    source = str(cfg.model)
    local = Path(source).expanduser()
    if local.exists():
        source = str(local)
        return TextEncoderBackbone(f"hf_text:{local.name}", AutoModel.from_pretrained(source), AutoTokenizer.from_pretrained(source))
    build = lambda: (AutoModel.from_pretrained(source), AutoTokenizer.from_pretrained(source))  # noqa: E731
    model, tokenizer = from_hub(f"hf_text:{source}", build)
    return TextEncoderBackbone(f"hf_text:{source}", model, tokenizer)
