"""Label enrichment: AudioSet strong labels (or weak labels) -> an LLM prompt for time-ordered captions
(the AS-SL recipe of EzAudio §2.3). The LLM runs through the same engine interface as the ALMs."""

from __future__ import annotations

from shards.config import Strict

from .engines import EngineConfig, SamplingConfig

STRONG_TEMPLATE = ("These sound events occur in a 10-second audio clip, with start and end times in seconds: "
                   "{timeline}. Write one short, natural caption that describes the sounds in the order they "
                   "happen. Do not mention times or numbers.")
WEAK_TEMPLATE = ("An audio clip contains these sounds: {labels}. Write one short, natural caption that "
                 "describes what can be heard.")


class LabelsConfig(Strict):
    enabled: bool = True
    use_weak: bool = False  # also caption clips that have only weak (clip-level) labels
    strong_template: str = STRONG_TEMPLATE
    weak_template: str = WEAK_TEMPLATE
    engine: EngineConfig = EngineConfig(model="Qwen/Qwen2.5-7B-Instruct", prompts=[],
                                        sampling=SamplingConfig(n=3, top_k=50, top_p=0.95, max_new_tokens=64))


def timeline(strong: list[dict]) -> str:
    """'0.0–2.3 s dog bark; 1.5–4.0 s car passing' in start order."""
    events = sorted(strong, key=lambda e: (e["start"], e["end"], e["label"]))
    return "; ".join(f"{e['start']:.1f}–{e['end']:.1f} s {e['label'].lower()}" for e in events)


def enrichment_prompt(strong: list[dict], labels: list[str], cfg: LabelsConfig) -> str | None:
    """The LLM prompt for a clip, or None when it has nothing to enrich."""
    if strong:
        return cfg.strong_template.format(timeline=timeline(strong))
    if cfg.use_weak and labels:
        return cfg.weak_template.format(labels=", ".join(label.lower() for label in labels))
    return None
