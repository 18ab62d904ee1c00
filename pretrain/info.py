"""Parameter counts of a DiT by group, built on the meta device (no weights are allocated)."""

from __future__ import annotations

import dataclasses

import torch

from .dit import EzAudioDiT, preset

GROUPS = ("blocks", "adaln", "cross_attention", "skips", "embeddings")


def _group(name: str) -> str:
    if ".adaln." in name or name.startswith(("time_shared.", "time_final.")):
        return "adaln"
    if any(p in name for p in (".cross_attn.", ".norm2.", ".norm_context.")) or name.startswith("text_proj."):
        return "cross_attention"
    if ".skip_" in name:
        return "skips"
    if name.startswith(("in_blocks.", "mid_block.", "out_blocks.")):
        return "blocks"
    return "embeddings"


def model_info(preset_name: str, adaln: str | None = None, text: bool = True, long_skip: bool = True) -> dict:
    overrides = {"long_skip": long_skip}
    if adaln:
        overrides["adaln"] = adaln
    if not text:
        overrides["text_dim"] = None
    config = preset(preset_name, **overrides)
    with torch.device("meta"):
        model = EzAudioDiT(config)
    counts = dict.fromkeys(GROUPS, 0)
    for name, p in model.named_parameters():
        counts[_group(name)] += p.numel()
    return {"preset": preset_name, "config": dataclasses.asdict(config), "params": counts, "total": sum(counts.values())}


def format_info(info: dict) -> str:
    c = info["config"]
    lines = [f"{info['preset']}: adaln={c['adaln']} text={'yes' if c['text_dim'] else 'no'} "
             f"long_skip={c['long_skip']} width={c['width']} blocks={2 * c['depth'] + 1}"]
    lines += [f"  {g:<16}{n / 1e6:10.2f} M" for g, n in info["params"].items()]
    lines.append(f"  {'total':<16}{info['total'] / 1e6:10.2f} M")
    return "\n".join(lines)
