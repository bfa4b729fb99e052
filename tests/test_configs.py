"""Every config in every group composes, and every builder instantiates (or fails in one line)."""
from importlib import resources
from pathlib import Path

import pytest
from PIL import Image

from moecl.backbones import build_backbone
from moecl.errors import ConfigError, DataNotFoundError
from moecl.methods import METHODS, build_method
from moecl.run import compose_config
from moecl.scenarios import SCENARIOS, build_stream

CONF = resources.files("moecl.conf")


def options(group: str) -> list[str]:
    return sorted(p.name[:-5] for p in CONF.joinpath(group).iterdir() if p.name.endswith(".yaml"))


def test_groups_are_shipped_in_the_package():
    for group in ("backbone", "scenario", "method", "trainer", "experiment"):
        assert options(group), group


@pytest.mark.parametrize("group", ["backbone", "scenario", "method", "trainer", "experiment"])
def test_every_option_composes(group):
    for option in options(group):
        cfg = compose_config([f"{group}={option}"])
        assert cfg.method.name and cfg.scenario.name and cfg.backbone.name


def test_every_method_config_names_a_registered_method():
    assert options("method") == METHODS.names()


@pytest.mark.parametrize("option", ["tiny_vit", "timm", "torchvision_vit"])
def test_every_backbone_instantiates_offline(option):
    overrides = [f"backbone={option}"]
    if option != "tiny_vit":  # no hub offline: build the architecture without weights
        overrides += ["backbone.pretrained=null", "backbone.model=" + ("vit_tiny_patch16_224" if option == "timm" else "vit_b_32")]
    bb = build_backbone(compose_config(overrides).backbone)
    assert bb.feature_dim > 0 and bb.default_targets
    assert not any(p.requires_grad for p in bb.parameters())


@pytest.mark.parametrize("option", ["mora", "smora", "flylora", "mixlora", "loramoe", "moe_adapters", "sema", "seq_lora", "linear_probe", "prototype"])
def test_every_method_instantiates(option):
    cfg = compose_config([f"method={option}"])
    method = build_method(cfg.method, build_backbone(cfg.backbone), 10)
    assert (method.head is not None) == method.needs_training
    assert (method.prototypes is not None) == (cfg.method.classifier == "prototype")


def test_split_digits_stream_is_five_by_two():
    stream = build_stream(compose_config([]).scenario)
    assert stream.num_experiences == 5
    assert all(len(c) == 2 for c in stream.classes_per_experience)
    assert sorted(stream.class_order) == list(range(10))
    # the class order has its own seed
    other = build_stream(compose_config(["scenario.class_order_seed=1"]).scenario)
    assert other.class_order != stream.class_order


def test_split_fmnist_reads_idx_files_or_names_the_package(tmp_path):
    cfg = compose_config(["scenario=split_fmnist", "scenario.max_train_per_class=20"])
    try:
        stream = build_stream(cfg.scenario)
    except DataNotFoundError as err:
        assert "dataset-fashion-mnist" in str(err) and "scenario.root" in str(err)
    else:
        assert len(stream.benchmark.train_stream[0].dataset) == 40
    missing = compose_config(["scenario=split_fmnist", f"scenario.root={tmp_path}"])
    with pytest.raises(DataNotFoundError, match="dataset-fashion-mnist"):
        build_stream(missing.scenario)


def test_split_cifar100_without_data_fails_in_one_line(tmp_path):
    with pytest.raises(DataNotFoundError, match="download=true"):
        build_stream(compose_config(["scenario=split_cifar100", f"scenario.root={tmp_path}"]).scenario)


def test_image_folder_splits_class_folders_into_tasks(tmp_path):
    for split in ("train", "test"):
        for c in range(4):
            d = Path(tmp_path, split, f"class{c}")
            d.mkdir(parents=True)
            for i in range(2):
                Image.new("RGB", (10, 10), (60 * c, 10 * i, 0)).save(d / f"{i}.png")
    cfg = compose_config(["scenario=image_folder", f"scenario.root={tmp_path}", "scenario.num_experiences=2", "scenario.image_size=8"])
    stream = build_stream(cfg.scenario)
    assert stream.num_experiences == 2 and stream.class_names == [f"class{c}" for c in range(4)]
    x, y, _ = stream.benchmark.train_stream[1].dataset[0]
    assert x.shape == (3, 8, 8) and int(y) in stream.classes_per_experience[1]


def test_uneven_class_split_keeps_every_class():
    cfg = compose_config(["scenario.num_experiences=3"])
    assert [len(c) for c in build_stream(cfg.scenario).classes_per_experience] == [3, 3, 4]


@pytest.mark.parametrize(
    "override, message",
    [
        ("scenario.num_experiences=11", "scenario.num_experiences=11"),
        ("scenario.setting=online", "class_incremental, task_incremental"),
        ("scenario.class_order=[0,1]", "permutation"),
    ],
)
def test_bad_scenario_values_fail_in_one_line(override, message):
    with pytest.raises(ConfigError, match=message):
        build_stream(compose_config([override]).scenario)


def test_registry_names_every_scenario():
    assert {"split_digits", "split_fmnist", "split_cifar100", "image_folder"} <= set(SCENARIOS.names())


def test_hub_weights_offline_fail_in_one_line(monkeypatch):
    from moecl.errors import CheckpointError

    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # read at import time
    with pytest.raises(CheckpointError) as err:
        build_backbone(compose_config(["backbone=timm", "backbone.model=vit_tiny_patch16_224"]).backbone)
    assert "backbone.checkpoint" in str(err.value) and "\n" not in str(err.value)


def test_local_checkpoint_loads_into_timm_backbone(tmp_path):
    import timm
    import torch
    from safetensors.torch import save_file

    source = timm.create_model("vit_tiny_patch16_224", pretrained=False)
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, tmp_path / "w.safetensors")
    torch.save(source.state_dict(), tmp_path / "w.pt")
    for name in ("w.safetensors", "w.pt"):
        bb = build_backbone(compose_config(["backbone=timm", "backbone.model=vit_tiny_patch16_224", f"backbone.checkpoint={tmp_path / name}"]).backbone)
        torch.testing.assert_close(bb.model.blocks[0].attn.qkv.weight, source.blocks[0].attn.qkv.weight)


def test_timm_names_with_pretrained_tags_are_accepted():
    bb = build_backbone(compose_config(["backbone=timm", "backbone.model=vit_tiny_patch16_224.augreg_in21k", "backbone.pretrained=false"]).backbone)
    assert bb.feature_dim == 192
    with pytest.raises(ConfigError, match="not a timm model"):
        build_backbone(compose_config(["backbone=timm", "backbone.model=nope", "backbone.pretrained=false"]).backbone)
