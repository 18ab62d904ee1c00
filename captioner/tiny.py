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
                    append_eos: bool = False, vocab_size: int = 400, byte_level: bool = False, **kwargs):
    """A small tokenizer (tokenizers library) wrapped as a transformers fast tokenizer: byte-level BPE
    like Qwen2's (byte_level=True), else a lower-casing unigram like T5's sentencepiece."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    corpus = [" ".join(VOCAB_TEXT[i: i + 8]) for i in range(len(VOCAB_TEXT))] * 4
    specials = list(dict.fromkeys([pad, eos, *([unk] if unk else []), *special_tokens]))
    if byte_level:
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, show_progress=False,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    else:
        tok = Tokenizer(models.Unigram())
        tok.normalizer = normalizers.Lowercase()
        tok.pre_tokenizer = pre_tokenizers.Metaspace()
        tok.decoder = decoders.Metaspace()
        alphabet = list("abcdefghijklmnopqrstuvwxyz0123456789.,;:!?'\"-()[]/")
        trainer = trainers.UnigramTrainer(vocab_size=vocab_size, special_tokens=specials, unk_token=unk,
                                          initial_alphabet=alphabet, show_progress=False)
    tok.train_from_iterator(corpus, trainer)
    if append_eos:  # T5 appends </s> to every sequence
        tok.post_processor = processors.TemplateProcessing(single=f"$A {eos}", pair=f"$A {eos} $B {eos}",
                                                           special_tokens=[(eos, tok.token_to_id(eos))])
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=eos, pad_token=pad, unk_token=unk,
                                   additional_special_tokens=special_tokens or None, **kwargs)


CHATML = ("{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
          "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
QWEN_SPECIALS = ["<|im_start|>", "<|im_end|>"]
AUDIO_SPECIALS = ["<|AUDIO|>", "<|audio_bos|>", "<|audio_eos|>"]


def _qwen2_text_config(vocab_size: int, tokenizer):
    from transformers import Qwen2Config

    return Qwen2Config(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                       eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"), pad_token_id=tokenizer.pad_token_id,
                       tie_word_embeddings=True)


TINY_WHISPER = dict(num_mel_bins=128, encoder_layers=1, encoder_attention_heads=2, encoder_ffn_dim=64, d_model=32,
                    max_source_positions=1500)  # the audio encoders' size (Whisper-large's 128 mel bins)
AUDIO_CHAT = ("{% for message in messages %}<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}"
              "{{ message['content'] }}{% else %}{% for part in message['content'] %}{% if part['type'] == 'audio' %}"
              "<sound>{% else %}{{ part['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
              "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def _save_audio_lm(directory: str | Path, model, tokenizer, processor_class, **processor_kwargs) -> Path:
    """The model, and its processor: a 16-kHz 128-mel Whisper feature extractor around `tokenizer`."""
    from transformers import WhisperFeatureExtractor

    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(directory)
    features = WhisperFeatureExtractor(feature_size=128, sampling_rate=16000)
    processor_class(feature_extractor=features, tokenizer=tokenizer, **processor_kwargs).save_pretrained(directory)
    return Path(directory)


def write_tiny_alm(directory: str | Path, seed: int = 0) -> Path:
    """A tiny Qwen2-Audio (Whisper-style encoder + Qwen2 LM) with its processor and chat template."""
    import torch
    from transformers import (
        Qwen2AudioConfig,
        Qwen2AudioEncoderConfig,
        Qwen2AudioForConditionalGeneration,
        Qwen2AudioProcessor,
    )

    torch.manual_seed(seed)
    tokenizer = build_tokenizer(QWEN_SPECIALS + AUDIO_SPECIALS, eos="<|im_end|>", pad="<|endoftext|>",
                                byte_level=True, vocab_size=600)
    config = Qwen2AudioConfig(audio_config=Qwen2AudioEncoderConfig(**TINY_WHISPER),
                              text_config=_qwen2_text_config(len(tokenizer), tokenizer),
                              audio_token_index=tokenizer.convert_tokens_to_ids("<|AUDIO|>"))
    return _save_audio_lm(directory, Qwen2AudioForConditionalGeneration(config), tokenizer, Qwen2AudioProcessor)


def write_tiny_af3(directory: str | Path, seed: int = 0) -> Path:
    """A tiny Audio Flamingo 3 (AF-Whisper encoder + projector + Qwen2 LM) with its processor and a ChatML
    template that puts AF3's <sound> placeholder where the user turn has audio."""
    import torch
    from transformers import (
        AudioFlamingo3Config,
        AudioFlamingo3ForConditionalGeneration,
        AudioFlamingo3Processor,
        AutoConfig,
    )

    torch.manual_seed(seed)
    tokenizer = build_tokenizer(QWEN_SPECIALS + ["<sound>"], eos="<|im_end|>", pad="<|endoftext|>",
                                byte_level=True, vocab_size=600)
    config = AudioFlamingo3Config(audio_config=AutoConfig.for_model("audioflamingo3_encoder", **TINY_WHISPER),
                                  text_config=_qwen2_text_config(len(tokenizer), tokenizer),
                                  audio_token_id=tokenizer.convert_tokens_to_ids("<sound>"))
    return _save_audio_lm(directory, AudioFlamingo3ForConditionalGeneration(config), tokenizer,
                          AudioFlamingo3Processor, chat_template=AUDIO_CHAT)


def write_tiny_llm(directory: str | Path, seed: int = 0) -> Path:
    """A tiny Qwen2 causal LM with a ChatML chat template (the label-enrichment LLM)."""
    import torch
    from transformers import Qwen2ForCausalLM

    torch.manual_seed(seed)
    tokenizer = build_tokenizer(QWEN_SPECIALS, eos="<|im_end|>", pad="<|endoftext|>", byte_level=True, vocab_size=600)
    tokenizer.chat_template = CHATML
    model = Qwen2ForCausalLM(_qwen2_text_config(len(tokenizer), tokenizer))
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return Path(directory)


def write_tiny_clap(directory: str | Path, seed: int = 0) -> Path:
    """A tiny unfused CLAP (HTSAT audio tower + RoBERTa text tower) with its processor."""
    import torch
    from transformers import (
        ClapAudioConfig,
        ClapConfig,
        ClapFeatureExtractor,
        ClapModel,
        ClapProcessor,
        ClapTextConfig,
    )

    torch.manual_seed(seed)
    tokenizer = build_tokenizer([], eos="</s>", pad="<pad>", unk="<unk>", bos_token="<s>", cls_token="<s>",
                                sep_token="</s>", mask_token="<mask>")
    text = ClapTextConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                          intermediate_size=64, max_position_embeddings=80, pad_token_id=tokenizer.pad_token_id,
                          projection_dim=16)
    audio = ClapAudioConfig(patch_embeds_hidden_size=8, depths=[1, 1, 1, 1], num_attention_heads=[2, 2, 2, 2],
                            hidden_size=64, projection_dim=16, enable_fusion=False)
    ClapModel(ClapConfig(text_config=text.to_dict(), audio_config=audio.to_dict(), projection_dim=16)).save_pretrained(directory)
    features = ClapFeatureExtractor(feature_size=64, sampling_rate=48000, hop_length=480, max_length_s=10,
                                    truncation="rand_trunc", padding="repeatpad")
    ClapProcessor(feature_extractor=features, tokenizer=tokenizer).save_pretrained(directory)
    return Path(directory)


def write_tiny_models(directory: str | Path, seed: int = 0) -> dict[str, Path]:
    """Tiny audio-language model, text LLM and CLAP under DIR/{alm,llm,clap}. Returns {name: path}."""
    directory = Path(directory)
    return {"alm": write_tiny_alm(directory / "alm", seed), "llm": write_tiny_llm(directory / "llm", seed),
            "clap": write_tiny_clap(directory / "clap", seed)}
