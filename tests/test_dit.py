import subprocess
import sys

import pytest
import torch

from pretrain.dit import EzAudioDiT, preset
from pretrain.info import model_info
from pretrain.sampler import guided_velocity


def _inputs(b=2, c=8, n=24, tokens=7, e=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    text_mask = torch.ones(b, tokens, dtype=torch.bool)
    text_mask[1, 4:] = False
    return dict(x=torch.randn(b, c, n, generator=g), t=torch.rand(b, generator=g),
                context=torch.randn(b, c, n, generator=g), mask=torch.rand(b, n, generator=g) > 0.5,
                text=torch.randn(b, tokens, e, generator=g), text_mask=text_mask)


def _perturb(model: torch.nn.Module, seed=0):
    """Random weights everywhere (zero-initialised gates would otherwise hide bugs)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return model


@pytest.mark.parametrize("adaln", ["sola", "full", "single"])
@pytest.mark.parametrize("long_skip", [True, False])
def test_forward_shapes_and_grads(adaln, long_skip):
    model = EzAudioDiT(preset("tiny", adaln=adaln, long_skip=long_skip))
    i = _inputs()
    out = model(i["x"], i["t"], i["context"], i["mask"], i["text"], i["text_mask"])
    assert out.shape == i["x"].shape
    out.pow(2).mean().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_mask_stage_has_no_text_modules_and_align_at_init_is_identical():
    torch.manual_seed(0)
    mask_model = _perturb(EzAudioDiT(preset("tiny", text_dim=None)))
    assert not any("cross_attn" in n or "text_proj" in n for n, _ in mask_model.named_parameters())
    i = _inputs()
    with torch.no_grad():
        before = mask_model(i["x"], i["t"], i["context"], i["mask"])
    align = mask_model.add_text_modules(text_dim=32)
    assert align.has_text and align.config.text_dim == 32
    with torch.no_grad():
        after = align(i["x"], i["t"], i["context"], i["mask"], i["text"], i["text_mask"])
    torch.testing.assert_close(after, before, rtol=0, atol=0)
    with pytest.raises(ValueError, match="text"):
        align(i["x"], i["t"], i["context"], i["mask"])


def test_batched_cfg_equals_two_forwards():
    model = _perturb(EzAudioDiT(preset("tiny"))).eval()
    i = _inputs()
    g = torch.Generator().manual_seed(3)
    neg, neg_mask = torch.randn(2, 5, 32, generator=g), torch.ones(2, 5, dtype=torch.bool)
    v = guided_velocity(model, text=i["text"], text_mask=i["text_mask"], neg_text=neg, neg_mask=neg_mask,
                        context=i["context"], mask=i["mask"], scale=4.0, rescale=0.7)
    with torch.no_grad():
        batched = v(i["x"], i["t"])
        pos = model(i["x"], i["t"], i["context"], i["mask"], i["text"], i["text_mask"])
        negv = model(i["x"], i["t"], i["context"], i["mask"], neg, neg_mask)
    from pretrain.sampler import cfg_combine

    torch.testing.assert_close(batched, cfg_combine(pos, negv, 4.0, 0.7), rtol=1e-5, atol=1e-5)


def test_text_padding_is_ignored():
    model = _perturb(EzAudioDiT(preset("tiny"))).eval()
    i = _inputs()
    garbage = i["text"].clone()
    garbage[1, 4:] = 1e3  # masked positions
    with torch.no_grad():
        a = model(i["x"], i["t"], i["context"], i["mask"], i["text"], i["text_mask"])
        b = model(i["x"], i["t"], i["context"], i["mask"], garbage, i["text_mask"])
    torch.testing.assert_close(a, b)


def test_masked_context_is_hidden():
    model = _perturb(EzAudioDiT(preset("tiny", text_dim=None))).eval()
    i = _inputs()
    other = i["context"].clone()
    other[i["mask"][:, None, :].expand_as(other)] = 99.0  # change only masked frames
    with torch.no_grad():
        a = model(i["x"], i["t"], i["context"], i["mask"])
        b = model(i["x"], i["t"], other, i["mask"])
    torch.testing.assert_close(a, b)


def test_save_load_round_trip(tmp_path):
    model = _perturb(EzAudioDiT(preset("tiny", adaln="full"))).eval()
    model.save_pretrained(tmp_path / "dit")
    loaded = EzAudioDiT.from_pretrained(tmp_path / "dit").eval()
    assert loaded.config == model.config
    for (n1, p1), (n2, p2) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert n1 == n2 and torch.equal(p1, p2)
    i = _inputs()
    with torch.no_grad():
        torch.testing.assert_close(model(i["x"], i["t"], text=i["text"], text_mask=i["text_mask"]),
                                   loaded(i["x"], i["t"], text=i["text"], text_mask=i["text_mask"]), rtol=0, atol=0)


def test_gradient_checkpointing_same_gradients():
    torch.manual_seed(0)
    a = _perturb(EzAudioDiT(preset("tiny")))
    b = EzAudioDiT(preset("tiny", gradient_checkpointing=True))
    b.load_state_dict(a.state_dict())
    i = _inputs()
    for m in (a, b):
        m(i["x"], i["t"], i["context"], i["mask"], i["text"], i["text_mask"]).pow(2).mean().backward()
    for (n, p), (_, q) in zip(a.named_parameters(), b.named_parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-5, atol=1e-6, msg=n)


@pytest.mark.parametrize("name,kwargs,expected", [
    ("dit-l", {}, 596.8e6),
    ("dit-l", {"text": False}, 489.7e6),
    ("dit-l", {"adaln": "full"}, 713.4e6),
    ("dit-l", {"adaln": "single"}, 562.4e6),
    ("dit-xl", {}, 874.8e6),
])
def test_model_info_counts_match_design(name, kwargs, expected):
    info = model_info(name, **kwargs)
    assert abs(info["total"] - expected) / expected < 0.01
    assert info["total"] == sum(info["params"].values())


def test_model_info_cli_json():
    out = subprocess.run([sys.executable, "-m", "pretrain", "model-info", "--preset", "dit-l", "--adaln", "full", "--json"],
                         capture_output=True, text=True, check=True).stdout
    import json

    info = json.loads(out)
    assert info["config"]["adaln"] == "full" and abs(info["total"] - 713.4e6) / 713.4e6 < 0.01
    assert info["params"]["skips"] > 0
    no_skip = model_info("dit-l", long_skip=False)
    assert no_skip["params"]["skips"] == 0


def test_bf16_weights_take_float32_inputs():
    model = EzAudioDiT(preset("tiny")).to(torch.bfloat16)
    i = _inputs()
    out = model(i["x"], i["t"], i["context"], i["mask"], i["text"], i["text_mask"])
    assert out.dtype == torch.bfloat16 and out.shape == i["x"].shape and torch.isfinite(out.float()).all()


def test_rotary_tables_stay_float32_under_bf16():
    """RoPE angles of late frames round visibly in bf16 (9e-3 at 500 frames): tables and rotation are fp32."""
    from pretrain.blocks import apply_rotary, rotary_tables

    cos, sin = rotary_tables(500, 16, "cpu")
    assert cos.dtype == sin.dtype == torch.float32
    x = torch.randn(1, 2, 500, 16, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16)
    rotated = apply_rotary(x, cos, sin)
    assert rotated.dtype == torch.bfloat16
    assert torch.equal(rotated, apply_rotary(x.float(), cos, sin).to(torch.bfloat16))  # rounded once, at the end
    old_way = apply_rotary(x.float(), cos.bfloat16().float(), sin.bfloat16().float())
    assert (old_way - apply_rotary(x.float(), cos, sin)).abs().max() > 1e-3  # what bf16 tables cost


def test_compiled_dit_reads_the_rotary_tables_instead_of_recomputing_them():
    """Traced into the compiled graph, the tables' pow/cos/sin were inlined by inductor into every rotary
    kernel (forward and backward: 15 % of the compiled dit-l step on an H100). The graphs must not compute them."""
    graphs = []

    def record(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    model = EzAudioDiT(preset("tiny"))
    i = _inputs()
    expected = model(i["x"], i["t"], i["context"], i["mask"], i["text"], i["text_mask"])
    model.compile(backend=record)
    out = model(i["x"], i["t"], i["context"], i["mask"], i["text"], i["text_mask"])
    torch.testing.assert_close(out, expected)
    ops = {str(node.target) for gm in graphs for node in gm.graph.nodes if node.op == "call_function"}
    assert graphs and any("scaled_dot_product_attention" in op for op in ops)  # the blocks were traced
    assert not any("outer" in op for op in ops), sorted(ops)  # angles = outer(positions, frequencies)


def test_from_pretrained_builds_on_meta_and_loads_every_tensor(tmp_path, monkeypatch):
    model = _perturb(EzAudioDiT(preset("tiny")))
    model.save_pretrained(tmp_path / "m")
    from pretrain import blocks

    calls = []
    monkeypatch.setattr(blocks.nn.init, "xavier_uniform_", lambda t, *a, **k: calls.append(t.device) or t)
    loaded = EzAudioDiT.from_pretrained(tmp_path / "m")
    assert calls and all(d.type == "meta" for d in calls)  # initialisation only touched meta tensors
    assert all(p.device.type == "cpu" for p in loaded.parameters())
    for (k, a), b in zip(model.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), k
    from safetensors.torch import load_file, save_file

    weights = load_file(tmp_path / "m" / "model.safetensors")
    weights.pop("mask_embed")
    save_file(weights, tmp_path / "m" / "model.safetensors")
    with pytest.raises(RuntimeError, match="mask_embed"):
        EzAudioDiT.from_pretrained(tmp_path / "m")
