import os

# Nothing in the tests may reach a hub: every model comes from `capflow tiny-models` directories.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _hf_home(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path_factory.getbasetemp() / "hf_home"))


@pytest.fixture
def rng():
    return np.random.default_rng(0)


@pytest.fixture(scope="session")
def corpus(tmp_path_factory):
    from captioner.synth import synth_corpus

    # one split (balanced_train_segments.csv) as the caption tests read it
    return synth_corpus(tmp_path_factory.mktemp("corpus"), num_clips=10, num_missing=1, num_corrupt=1, eval_share=0)


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory):
    """Every tiny model, written once per test session by the same code as `capflow tiny-models`."""
    from capflow.tiny import write_all_tiny_models

    return write_all_tiny_models(tmp_path_factory.mktemp("tiny_models"))
