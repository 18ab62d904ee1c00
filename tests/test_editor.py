"""The instruction editor (finetune/editor.py, finetune/train.py): identity with the T2A model at step 0,
the source is used, batched guidance, t_start = 0, resume and init-from, the LoRA adapter round trip, and
editing files of any rate, channel count and length."""

import json
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from captioner.synth import synth_captioned_set
from finetune.config import EditDataConfig, FinetuneConfig
from finetune.edit_data import run_edit_data
from finetune.editor import InstructionEditor, editor_velocity
from finetune.train import EditTrainer, edit_loss, load_editor_module, run_finetune
from pretrain.checkpoint import list_checkpoints
from pretrain.encode import EncodeConfig, run_encode
from pretrain.flow import interpolate
from pretrain.pipeline import TextToAudio
from shards import audio


@pytest.fixture(scope="module")
def edit_latents(tmp_path_factory, tiny_models):
    """Edit groups of procedural clips (train and test splits), encoded like the untrained T2A's latents."""
    root = tmp_path_factory.mktemp("editor")
    captioned = synth_captioned_set(root / "audio", num_clips=24, eval_share=0.25)
    run_edit_data(EditDataConfig(inputs=[str(captioned)], output=str(root / "edit"), unit_size=8, llm=None,
                                 groups_per_background=3, max_groups=40, splits={"valid": 0.25, "test": 0.0},
                                 min_background_seconds=2.0,
                                 clap={"model": str(tiny_models["clap"])}), progress=False)
    manifest = run_encode(EncodeConfig(input=str(root / "edit"), output=str(root / "latent"), duration=2.0,
                                       batch_size=16, codec={"pretrained": str(tiny_models["oobleck"]), "subfolder": None}),
                          progress=False)
    # the T2A model the editor starts from: the untrained tiny bundle, as if trained on latents normalised so
    t2a = root / "t2a"
    shutil.copytree(tiny_models["t2a-untrained"], t2a)
    index = json.loads((t2a / "capflow.json").read_text())
    index["codec"] = manifest["extra"]["codec"]
    index["text_encoder"]["pretrained"] = str(tiny_models["flan-t5"])
    (t2a / "capflow.json").write_text(json.dumps(index))
    return root


def _cfg(out, edit_latents, tiny_models, **kw) -> FinetuneConfig:
    base = {"output_dir": str(out), "init_from": str(edit_latents / "t2a"), "tensorboard": False,
            "data": {"shards": [str(edit_latents / "latent")], "micro_batch_size": 4, "num_workers": 0, "shuffle": 8,
                     "segment_steps": 50},
            "optim": {"lr": 1e-3, "warmup_steps": 1}, "ema": {"decay": 0.9}, "steps": 4, "batch_size": 4,
            "save_every": 2, "log_every": 2, "validation": {"every": 0, "clap_model": None},
            "edit": {"min_clap": None, "lora": {"rank": 4, "alpha": 4}, "sampler": {"steps": 3, "duration": 2.0}}}
    for key, value in kw.items():
        base[key] = base[key] | value if isinstance(value, dict) else value
    return FinetuneConfig.model_validate(base)


def test_editor_at_step_zero_is_the_t2a_model(tiny_models, edit_latents):
    t2a = TextToAudio.from_pretrained(edit_latents / "t2a")
    cfg = _cfg(edit_latents / "unused", edit_latents, tiny_models)
    module, _, _ = load_editor_module(cfg)
    module.eval()
    torch.manual_seed(0)
    c = t2a.dit.config.latent_channels
    x, source, t = torch.randn(2, c, 30), torch.randn(2, c, 30), torch.rand(2)
    texts = ["Add a chirp", "Remove the hum"]
    with torch.no_grad():
        text, mask = t2a.text_encoder(texts)
        expected = t2a.dit(x, t, text=text, text_mask=mask)
        got = module(x, t, source, texts)
    assert module.dit.config.source_channels == c and module.dit.proj_in.in_channels == 3 * c + 1
    assert torch.equal(got, expected)  # zero source weights and zero LoRA B: exactly the T2A model


def test_batched_guidance_equals_separate_forwards(tiny_models, edit_latents):
    module, _, _ = load_editor_module(_cfg(edit_latents / "unused", edit_latents, tiny_models))
    dit = module.dit.eval()
    torch.nn.init.normal_(dit.proj_in.weight, std=0.2)  # make the source matter
    for blk in dit.blocks():  # and the text (zero-initialised cross-attention)
        torch.nn.init.normal_(blk.cross_attn.proj.weight, std=0.2)
    c = dit.config.latent_channels
    x, src, t = torch.randn(2, c, 20), torch.randn(2, c, 20), torch.rand(2)
    with torch.no_grad():
        text, mask = module.text(["Add a chirp", "Remove noise"])
        null, null_mask = module.text(["", ""])
        v_si = dit(x, t, text=text, text_mask=mask, source=src)
        v_s = dit(x, t, text=null, text_mask=null_mask, source=src)
        v_00 = dit(x, t, text=null, text_mask=null_mask, source=torch.zeros_like(src))
        two = editor_velocity(dit, src, text, mask, null, null_mask, cfg=3.0, cfg_source=1.5, rescale=0.0)(x, t)
        one = editor_velocity(dit, src, text, mask, null, null_mask, cfg=3.0, rescale=0.0)(x, t)
    torch.testing.assert_close(two, v_00 + 1.5 * (v_s - v_00) + 3.0 * (v_si - v_s), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(one, v_s + 3.0 * (v_si - v_s), rtol=1e-4, atol=1e-5)
    assert not torch.allclose(v_s, v_00)  # the source branch is a different forward


def _held_out_losses(module, edit_latents, cfg) -> tuple[float, float, float]:
    """Flow loss on test-split triplets with source and instruction, with the source zeroed, and with the
    instruction dropped (the empty text, as training drops it), on the same noise and t."""
    from finetune.triplets import TripletDecoder, triplet_pipeline

    batch = {"latent": [], "source": [], "valid": [], "instruction": []}
    for s in triplet_pipeline(edit_latents / "latent", decoder=TripletDecoder(min_clap=None, seed=1)):
        if s["split"] != "test":
            continue
        batch["latent"].append(torch.from_numpy(s["target"]).float())
        batch["source"].append(torch.from_numpy(s["source"]).float())
        batch["instruction"].append(s["triplet"]["instruction"])
    assert len(batch["latent"]) >= 2, "the fixture must hold test groups"
    x1, src = torch.stack(batch["latent"]), torch.stack(batch["source"])
    losses = []
    module.eval()
    no_text = [""] * len(batch["instruction"])
    for source, texts in ((src, batch["instruction"]), (torch.zeros_like(src), batch["instruction"]), (src, no_text)):
        torch.manual_seed(0)
        noise = [torch.randn_like(x1) for _ in range(8)]
        with torch.no_grad():
            total = 0.0
            for k, eps in enumerate(noise):
                t = torch.full((x1.shape[0],), (k + 0.5) / len(noise))
                v = module(interpolate(x1, eps, t), t, source, texts)
                total += float(((v - (x1 - (1 - 1e-4) * eps)) ** 2).mean())
        losses.append(total / len(noise))
    return losses[0], losses[1], losses[2]


@pytest.mark.timeout(400)
def test_trained_editor_uses_the_source_and_exports_a_loadable_bundle(tmp_path, tiny_models, edit_latents):
    cfg = _cfg(tmp_path / "run", edit_latents, tiny_models, steps=120, save_every=120, log_every=40,
               data={"micro_batch_size": 8}, batch_size=8, optim={"lr": 2e-3, "warmup_steps": 5},
               edit={"source_dropout": 0.0, "instruction_dropout": 0.0, "validation_groups": 2},
               validation={"every": 120, "clap_model": str(tiny_models["clap"])})
    trainer = EditTrainer(cfg)
    export = trainer.train()
    full, without_source, without_instruction = _held_out_losses(trainer.unwrapped, edit_latents, cfg)
    print("held-out loss: full", full, "no source", without_source, "no instruction", without_instruction)
    assert full < 0.8 * without_source, (full, without_source)  # measured: 0.64 vs 1.30 after 150 steps
    assert full < without_instruction, (full, without_instruction)  # the instruction says which edit
    assert trainer.last_val_clap is not None and list((tmp_path / "run" / "validation").glob("step-*/*.wav"))
    # the LoRA adapter: saved, reloaded and merged to the same instruction embeddings as in training
    adapter = load_file(export / "text_lora" / "adapter_model.safetensors")
    assert adapter and any(float(v.abs().max()) > 0 for k, v in adapter.items() if "lora_B" in k)
    texts = ["Add clicking", "Remove the sine tone"]
    trainer.ema.copy_to(trainer.trainable())  # the export holds the EMA weights
    with torch.no_grad():
        trained = trainer.unwrapped.text(texts)[0]
        merged = InstructionEditor.from_pretrained(export).text(texts)[0]
        separate = InstructionEditor.from_pretrained(export, merge=False).text(texts)[0]
    torch.testing.assert_close(merged, trained, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(separate, trained, rtol=1e-5, atol=1e-6)
    card = (export / "README.md").read_text()
    assert "instruction editor" in card and json.loads((export / "capflow.json").read_text())["format"] == "capflow-editor"


def test_editor_checkpoints_hold_each_trained_tensor_once_and_no_frozen_one(tmp_path, tiny_models, edit_latents):
    from safetensors import safe_open

    run_finetune(_cfg(tmp_path / "run", edit_latents, tiny_models, steps=2, save_every=2))
    ckpt = list_checkpoints(tmp_path / "run")[-1]
    counts: dict[str, int] = {}
    for file in ckpt.rglob("*.safetensors"):
        with safe_open(file, "pt") as f:
            for key in f.keys():
                counts[key] = counts.get(key, 0) + 1
    frozen = [k for k in counts if "SelfAttention.q.weight" in k or "DenseReluDense" in k]
    assert not frozen, frozen[:3]  # Flan-T5's frozen weights are never in a checkpoint
    dit = load_file(ckpt / "dit_raw" / "dit" / "model.safetensors")
    assert all(counts[k] == 2 for k in dit)  # each DiT tensor in dit_raw and dit_ema only


def test_edit_stage_resumes_exactly_and_continues_from_an_editor(tmp_path, tiny_models, edit_latents):
    constant = {"schedule": "constant"}  # the run stopped at step 2 must follow the same LR schedule
    run_finetune(_cfg(tmp_path / "full", edit_latents, tiny_models, optim=constant))
    run_finetune(_cfg(tmp_path / "part", edit_latents, tiny_models, steps=2, optim=constant))
    resumed = EditTrainer(_cfg(tmp_path / "part", edit_latents, tiny_models, optim=constant), resume="latest")
    assert resumed.state.step == 2
    resumed.train()
    for weights in ("dit_raw/dit/model.safetensors", "dit_raw/text_lora/adapter_model.safetensors"):
        a = load_file(list_checkpoints(tmp_path / "full")[-1] / weights)
        b = load_file(list_checkpoints(tmp_path / "part")[-1] / weights)
        for k in a:
            torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)
    more = run_finetune(_cfg(tmp_path / "more", edit_latents, tiny_models, steps=2,
                             init_from=str(tmp_path / "full" / "export")))
    assert (more / "text_lora" / "adapter_config.json").is_file()


def test_edit_loss_drops_instruction_and_source(tiny_models, edit_latents):
    cfg = _cfg(edit_latents / "unused", edit_latents, tiny_models,
               edit={"instruction_dropout": 1.0, "source_dropout": 1.0})
    seen = {}

    def model(x_t, t, source, instructions):
        seen["source"], seen["instructions"] = source, instructions
        return torch.zeros_like(x_t)

    batch = {"latent": torch.randn(2, 4, 6), "source": torch.randn(2, 4, 6), "valid": torch.ones(2, 6, dtype=torch.bool),
             "instruction": ["Add a", "Remove b"]}
    edit_loss(model, batch, cfg, "cpu")
    assert seen["instructions"] == ["", ""] and not seen["source"].any()


def test_edit_any_rate_channels_and_length_and_t_start_zero(tmp_path, tiny_models, edit_latents, monkeypatch):
    export = run_finetune(_cfg(tmp_path / "run", edit_latents, tiny_models, steps=2))
    editor = InstructionEditor.from_pretrained(export)
    rng = np.random.default_rng(0)
    for rate, channels, seconds in ((22050, 2, 1.3), (16000, 1, 5.5)):  # 5.5 s: windows of 2 s with overlap
        clip = audio.Audio((0.1 * rng.standard_normal((channels, int(rate * seconds)))).astype(np.float32), rate)
        out = editor.edit(clip, "Remove the noise", steps=2)
        assert out.sample_rate == rate and out.samples.shape == clip.samples.shape and np.isfinite(out.samples).all()
    z = torch.randn(1, editor.dit.config.latent_channels, 20)
    from_noise = editor.edit_latents(z, ["Add a chirp"], t_start=0.0, steps=3)
    from_source = editor.edit_latents(z, ["Add a chirp"], t_start=0.5, steps=3)
    assert torch.isfinite(from_noise).all() and not torch.allclose(from_noise, from_source)
    # windows of the 5.5-s clip, one per forward or three: the same edit (noise is per window), memory bounded
    one = editor.edit(clip, "Remove the noise", steps=2, window_batch=1)
    three = editor.edit(clip, "Remove the noise", steps=2, window_batch=3)
    np.testing.assert_allclose(one.samples, three.samples, atol=1e-4)
    # a file is streamed (here in 1-s blocks) to the same edit, and written only once complete
    monkeypatch.setattr(audio, "BLOCK_SECONDS", 1.0)
    audio.write(tmp_path / "in.wav", clip)
    assert editor.edit_file(tmp_path / "in.wav", tmp_path / "edits" / "out.wav", "Remove the noise", steps=2,
                            window_batch=3) == 1.0
    np.testing.assert_allclose(audio.decode(tmp_path / "edits" / "out.wav").samples, three.samples, atol=1e-5)
    assert [p.name for p in (tmp_path / "edits").iterdir()] == ["out.wav"]
    with pytest.raises(ValueError, match="capflow-t2a"):
        InstructionEditor.from_pretrained(tiny_models["t2a-untrained"])


def test_export_best_keeps_the_weights_of_the_best_validation(tmp_path, tiny_models, edit_latents, monkeypatch):
    from finetune.train import EditValidator

    scores = iter([0.30, 0.10])  # the step-2 weights validate best, the step-4 ones worse
    monkeypatch.setattr(EditValidator, "__init__", lambda self, *args: None)
    monkeypatch.setattr(EditValidator, "run", lambda self, model, step, directory: next(scores))
    cfg = _cfg(tmp_path / "run", edit_latents, tiny_models, validation={"every": 2, "clap_model": None})
    export = run_finetune(cfg)
    info = json.loads((export / "capflow.json").read_text())["info"]
    assert info["selected"] == "best" and info["step"] == 2 and info["validation_clap"] == 0.3
    best = load_file(tmp_path / "run" / "best" / "dit" / "model.safetensors")
    last = load_file(list_checkpoints(tmp_path / "run")[-1] / "dit_ema" / "dit" / "model.safetensors")
    exported = load_file(export / "dit" / "model.safetensors")
    assert all(torch.equal(exported[k], best[k]) for k in best)
    assert any(not torch.equal(exported[k], last[k]) for k in last)
    last_cfg = _cfg(tmp_path / "last", edit_latents, tiny_models, validation={"every": 0, "clap_model": None},
                    edit={"export": "last"})
    assert json.loads((run_finetune(last_cfg) / "capflow.json").read_text())["info"]["selected"] == "last"
    with pytest.raises(ValueError, match="validation_split"):
        _cfg(tmp_path / "x", edit_latents, tiny_models, edit={"validation_split": "test"})


def test_edit_stage_refuses_latents_of_another_codec(tmp_path, tiny_models, edit_latents):
    t2a = tmp_path / "t2a"
    shutil.copytree(edit_latents / "t2a", t2a)
    index = json.loads((t2a / "capflow.json").read_text())
    index["codec"]["pretrained"] = "stabilityai/stable-audio-open-1.0"  # the bundle generates with another VAE
    index["codec"]["subfolder"] = "vae"
    (t2a / "capflow.json").write_text(json.dumps(index))
    with pytest.raises(ValueError, match="encoded with the codec"):
        EditTrainer(_cfg(tmp_path / "run", edit_latents, tiny_models, init_from=str(t2a)))


def test_editor_from_a_v_ddpm_bundle_trains_and_edits_in_v_prediction(tmp_path, tiny_models, edit_latents, monkeypatch):
    """An editor from a v-DDPM T2A bundle (EzAudio's objective) trains with the v-loss, records its objective, and
    edits as diffusers' img2img with DDIM: the last 1 - t_start of the schedule, from the source noised to its
    first timestep."""
    from diffusers import DDIMScheduler

    from pretrain.ezaudio import EZAUDIO_SCHEDULER
    from pretrain.objective import Objective

    t2a = tmp_path / "t2a-vddpm"
    shutil.copytree(edit_latents / "t2a", t2a)
    index = json.loads((t2a / "capflow.json").read_text())
    (t2a / "capflow.json").write_text(json.dumps(index | {"objective": "v-ddpm", "scheduler": EZAUDIO_SCHEDULER}))
    seen, point = [], Objective.point
    monkeypatch.setattr(Objective, "point", lambda self, *a, **k: seen.append(self.name) or point(self, *a, **k))
    export = run_finetune(_cfg(tmp_path / "run", edit_latents, tiny_models, init_from=str(t2a), steps=2))
    assert seen and set(seen) == {"v-ddpm"}
    editor = InstructionEditor.from_pretrained(export)
    assert editor.objective == Objective("v-ddpm", EZAUDIO_SCHEDULER)
    source = torch.randn(1, editor.dit.config.latent_channels, 20, generator=torch.Generator().manual_seed(1))
    got = editor.edit_latents(source, ["Add a chirp"], steps=4, t_start=0.25, seed=3)

    generator = torch.Generator().manual_seed(3)
    noise = torch.randn(source.shape, generator=generator)
    scheduler = DDIMScheduler(**EZAUDIO_SCHEDULER)
    scheduler.set_timesteps(4)
    timesteps = scheduler.timesteps[1:]  # strength 1 - t_start = 0.75 of 4 steps: the last 3
    x = scheduler.add_noise(source, noise, timesteps[:1])
    text, mask = editor.text(["Add a chirp"])
    null, null_mask = editor.text([""])
    s = editor.sampler
    velocity = editor_velocity(editor.dit, source, text, mask, null, null_mask, s.cfg, s.cfg_source, s.rescale)
    with torch.no_grad():
        for t in timesteps:
            x = scheduler.step(velocity(x, torch.full((1,), t / 1000)), t, x, eta=1.0, generator=generator).prev_sample
    torch.testing.assert_close(got, x, rtol=1e-4, atol=1e-4)

