"""Tiny random models in the standard save_pretrained layout, so tests and the demo exercise the same
from_pretrained code as real checkpoints. Nothing here is downloaded: tokenizers are trained on the spot.
"""

from __future__ import annotations

from pathlib import Path

# Words that captions, prompts and edit instructions use, so tiny tokenizers split them into whole tokens.
VOCAB_TEXT = """a an the of and with then while in on at to from by for is are was be it this that what
you hear audio sound sounds clip describe briefly can please write caption captions time ordered events
dog dogs bark barks barking cat meows bird birds sing sings singing chirp chirps chirping car cars engine
engines hum hums humming passes passing siren sirens wail wails speech man woman child speaks speaking talk
music plays playing rain falls wind blows water flows door slams footsteps walking knock clicks click
clicking tone tones sine beep beeps noise burst bursts hiss static loud quiet soft faint distant close
twice once three times repeatedly briefly background foreground followed by first after before seconds
add remove replace keep louder quieter instead birds chirping""".split()


def build_tokenizer(special_tokens: list[str], eos: str, pad: str, unk: str | None = None,
                    append_eos: bool = False, vocab_size: int = 400, **kwargs):
    """A small unigram tokenizer (tokenizers library) wrapped as a transformers fast tokenizer."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.Unigram())
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    corpus = [" ".join(VOCAB_TEXT[i: i + 8]) for i in range(len(VOCAB_TEXT))] * 4
    alphabet = list("abcdefghijklmnopqrstuvwxyz0123456789.,;:!?'\"-()[]/")
    specials = list(dict.fromkeys([pad, eos, *([unk] if unk else []), *special_tokens]))
    trainer = trainers.UnigramTrainer(vocab_size=vocab_size, special_tokens=specials, unk_token=unk,
                                      initial_alphabet=alphabet, show_progress=False)
    tok.train_from_iterator(corpus, trainer)
    if append_eos:  # T5 appends </s> to every sequence
        tok.post_processor = processors.TemplateProcessing(single=f"$A {eos}", pair=f"$A {eos} $B {eos}",
                                                           special_tokens=[(eos, tok.token_to_id(eos))])
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=eos, pad_token=pad, unk_token=unk,
                                   additional_special_tokens=special_tokens or None, **kwargs)


def write_tiny_models(directory: str | Path, seed: int = 0) -> dict[str, Path]:
    """Tiny captioning models (later: ALM, LLM, CLAP). Returns {name: path}."""
    return {}
