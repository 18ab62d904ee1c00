import pytest

from shards.config import ConfigError, Strict, config_hash, diff_configs, load_config, save_config


class Train(Strict):
    lr: float = 1e-4
    steps: int = 10


class Cfg(Strict):
    name: str = "x"
    train: Train = Train()


def test_yaml_and_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("name: run\ntrain:\n  lr: 0.5\n")
    cfg = load_config(Cfg, path, ["train.steps=7", "name=other"])
    assert cfg.train.lr == 0.5 and cfg.train.steps == 7 and cfg.name == "other"
    saved = save_config(cfg, tmp_path / "out")
    assert load_config(Cfg, saved) == cfg


def test_unknown_key_names_key_and_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("train:\n  lrr: 0.5\n")
    with pytest.raises(ConfigError) as e:
        load_config(Cfg, path)
    assert "train.lrr" in str(e.value) and "bad.yaml" in str(e.value) and "unknown key" in str(e.value)


def test_wrong_type_and_bad_override(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  steps: many\n")
    with pytest.raises(ConfigError, match="train.steps"):
        load_config(Cfg, path)
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        load_config(Cfg, None, ["train.steps"])
    with pytest.raises(ConfigError, match="train.nope"):
        load_config(Cfg, None, ["train.nope=1"])
    (tmp_path / "list.yaml").write_text("- 1\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(Cfg, tmp_path / "list.yaml")


def test_hash_and_diff():
    a, b = Cfg(), Cfg(train=Train(lr=2.0))
    assert config_hash(a) == config_hash(Cfg()) != config_hash(b)
    assert diff_configs(a.model_dump(), b.model_dump()) == ["train.lr: 0.0001 -> 2.0"]


def test_override_that_is_not_yaml_is_a_string():
    assert load_config(Cfg, None, ["name=[unclosed"]).name == "[unclosed"
    assert load_config(Cfg, None, ["name=Describe: this: sound"]).name == "Describe: this: sound"
    with pytest.raises(ConfigError, match="name"):  # valid YAML (a mapping) of the wrong type is still refused
        load_config(Cfg, None, ["name=a: b"])
