"""Every shipped config loads into its typed model (a renamed key breaks this test, not a user's run)."""

from pathlib import Path

import pytest

from captioner.config import CaptionConfig
from shards.config import load_config

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("path", sorted((ROOT / "configs" / "caption").glob("*.yaml")), ids=lambda p: p.name)
def test_caption_configs_validate(path):
    cfg = load_config(CaptionConfig, path)
    assert cfg.clap.top_k >= 1 and cfg.unit_size >= 1


@pytest.mark.parametrize("path", sorted((ROOT / "configs" / "edit").glob("*.yaml")), ids=lambda p: p.name)
def test_edit_data_configs_validate(path):
    from finetune.config import EditDataConfig

    cfg = load_config(EditDataConfig, path)
    assert cfg.unit_size >= 1 and cfg.inputs


@pytest.mark.parametrize("path", sorted((ROOT / "configs" / "finetune").glob("*.yaml")), ids=lambda p: p.name)
def test_finetune_configs_validate(path):
    from finetune.config import FinetuneConfig

    cfg = load_config(FinetuneConfig, path)
    assert cfg.stage == "edit" and cfg.init_from


@pytest.mark.parametrize("path", sorted((ROOT / "configs" / "separation").glob("*.yaml")), ids=lambda p: p.name)
def test_separation_configs_validate(path):
    from separation.config import SeparationConfig

    cfg = load_config(SeparationConfig, path)
    assert cfg.stage in ("query", "separator") and cfg.data.shards


@pytest.mark.parametrize("path", sorted((ROOT / "configs" / "codec").glob("*.yaml")), ids=lambda p: p.name)
def test_codec_configs_validate(path):
    from pretrain.codec_train import CodecTrainConfig

    cfg = load_config(CodecTrainConfig, path)
    assert cfg.stage == "codec" and cfg.data.shards
    assert 2 * cfg.codec.architecture.latent_dim == cfg.codec.architecture.vae_config()["encoder_output_channels"]
