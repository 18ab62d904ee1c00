"""Edit instructions and target captions for a group's six triplets, from templates (optionally paraphrased
by the label LLM). Position and loudness words follow the recorded onset and SNR, as MMEdit does."""

from __future__ import annotations

import numpy as np

from captioner.engines import Request, clean_caption

# The six triplets of a group: name -> (source role, target role, operation)
TRIPLETS = {
    "add_a": ("x", "xa", "add"), "add_b": ("x", "xb", "add"),
    "remove_a": ("xa", "x", "remove"), "remove_b": ("xb", "x", "remove"),
    "replace_ab": ("xa", "xb", "replace"), "replace_ba": ("xb", "xa", "replace"),
}
OPERATIONS = ("add", "remove", "replace")

ADD = ["Add {e}", "Add the sound of {e}", "Add {e} {where}", "Insert {e} {where}", "Mix in {e}{loud}",
       "Put {e} {where}", "Include the sound of {e}{loud}", "Overlay {e} {where}"]
REMOVE = ["Remove {e}", "Remove the sound of {e}", "Take out {e}", "Get rid of {e}", "Remove {e} {where}",
          "Cut out the {e}", "Delete the sound of {e}", "Erase {e}"]
REPLACE = ["Replace {a} with {b}", "Replace the sound of {a} with {b}", "Swap {a} for {b}", "Change {a} to {b}",
           "Turn {a} into {b}", "Substitute {b} for {a}", "Exchange {a} for {b}"]
PARAPHRASE_PROMPT = ("Rewrite this audio editing instruction in different words, keeping its meaning. Answer with "
                     "the instruction only.\nInstruction: {instruction}")
CAPTION_PROMPT = ("An audio clip is described as: \"{caption}\". The sound of {event} is added {where}. Write one "
                  "short caption of the new clip. Answer with the caption only.")


def where(placement: dict, duration: float) -> str:
    """'at the beginning' / 'in the middle' / 'at the end', from the event's centre."""
    centre = (placement["onset_s"] + placement["duration_s"] / 2) / max(duration, 1e-6)
    return "at the beginning" if centre < 1 / 3 else "in the middle" if centre < 2 / 3 else "at the end"


def loud(placement: dict) -> str:
    snr = placement["snr_db"]
    return ", loudly" if snr >= 15 else ", quietly" if snr < 2 else ""


def instructions(events: dict, mix: dict, duration: float, rng: np.random.Generator, variants: int) -> dict:
    """{triplet name: [wordings]} for a group (events: {'a': name, 'b': name}; mix: the recorded placements)."""

    def pick(templates: list[str], **slots) -> list[str]:
        chosen = rng.choice(len(templates), size=min(variants, len(templates)), replace=False)
        return [clean_caption(templates[i].format(**slots)).rstrip(".") for i in chosen]

    out = {}
    for e in ("a", "b"):
        slots = {"e": events[e], "where": where(mix[e], duration), "loud": loud(mix[e])}
        out[f"add_{e}"] = pick(ADD, **slots)
        out[f"remove_{e}"] = pick(REMOVE, **slots)
    out["replace_ab"] = pick(REPLACE, a=events["a"], b=events["b"])
    out["replace_ba"] = pick(REPLACE, a=events["b"], b=events["a"])
    return out


def target_caption(caption: str, event: str, placement: dict, duration: float) -> str:
    """The caption of X + event, written from X's caption."""
    return clean_caption(f"{caption.rstrip(' .')}, with {event} {where(placement, duration)}")


def paraphrase(engine, texts: list[str], seed: int) -> list[str]:
    """One LLM rewording per text (cleaned; an empty answer keeps the original)."""
    answers = engine.generate([Request(PARAPHRASE_PROMPT.format(instruction=t), None, seed, 1) for t in texts])
    return [clean_caption(a[0]).rstrip(".") if a and a[0].strip() else t for t, a in zip(texts, answers)]


def llm_captions(engine, jobs: list[tuple[str, str, str]], seed: int) -> list[str]:
    """Target captions written by the LLM from (X caption, event, where)."""
    answers = engine.generate([Request(CAPTION_PROMPT.format(caption=c, event=e, where=w), None, seed, 1)
                               for c, e, w in jobs])
    return [clean_caption(a[0]) if a and a[0].strip() else clean_caption(f"{c.rstrip(' .')}, with {e} {w}")
            for (c, e, w), a in zip(jobs, answers)]
