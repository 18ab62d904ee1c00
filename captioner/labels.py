"""Label enrichment: AudioSet strong labels (or weak labels) -> an LLM prompt for time-ordered captions
(the AS-SL recipe of EzAudio §2.3). The LLM runs through the same engine interface as the ALMs. Without an LLM
(`method: template`), the caption is written from the labels by a fixed template: "Sine tone, then chirp."
"""

from __future__ import annotations

from typing import Literal

from shards.config import Strict

from .engines import EngineConfig, SamplingConfig

STRONG_TEMPLATE = ("These sound events occur in a 10-second audio clip, with start and end times in seconds: "
                   "{timeline}. Write one short, natural caption that describes the sounds in the order they "
                   "happen. Do not mention times or numbers.")
WEAK_TEMPLATE = ("An audio clip contains these sounds: {labels}. Write one short, natural caption that "
                 "describes what can be heard.")


class LabelsConfig(Strict):
    enabled: bool = True
    # llm: the engine below writes `sampling.n` captions from the prompt; template: one caption written from
    # the labels (`template_caption`), no model: for corpora without an LLM at hand, and the demo's
    method: Literal["llm", "template"] = "llm"
    use_weak: bool = False  # also caption clips that have only weak (clip-level) labels
    strong_template: str = STRONG_TEMPLATE
    weak_template: str = WEAK_TEMPLATE
    engine: EngineConfig = EngineConfig(model="Qwen/Qwen2.5-7B-Instruct", prompts=[],
                                        sampling=SamplingConfig(n=3, top_k=50, top_p=0.95, max_new_tokens=64))

    @property
    def uses_llm(self) -> bool:
        return self.enabled and self.method == "llm"


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


def template_caption(strong: list[dict], labels: list[str], use_weak: bool = False) -> str | None:
    """A caption from the labels alone: strong labels in start order, an event that begins while the previous
    one sounds joined by "with", a later one by "then" ("Sine tone, then chirp with hum."); weak labels (when
    `use_weak`) joined by "and". None when there is nothing to say."""
    events = sorted(strong, key=lambda e: (e["start"], e["end"], e["label"]))
    if events:
        text, end = events[0]["label"].lower(), events[0]["end"]
        for e in events[1:]:
            text += (" with " if e["start"] < end else ", then ") + e["label"].lower()
            end = max(end, e["end"])
        return text[0].upper() + text[1:] + "."
    if use_weak and labels:
        names = [label.lower() for label in labels]
        text = names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]
        return text[0].upper() + text[1:] + "."
    return None
