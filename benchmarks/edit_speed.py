"""Instruction-editing speed, in one run: seconds per 10-s edit against generating a 10-s clip at the same step
size (editing integrates from t_start, so the ratio should follow 1 − t_start), and the cost of two-scale
guidance (instruction + source: 3 branches) against instruction-only CFG (2 branches), all branches batched.

The DiT sampling loop is timed (the VAE runs once per clip either way, and text encoding once per
instruction); text embeddings are random tensors of the encoder's width. CPU: the small preset; with CUDA
also dit-l in bf16 (RFM-Editing reports 10.97 s per edit with 200 Euler steps; the target is 10x less).

Memory: peak RSS of `InstructionEditor.edit` on 1- and 10-minute stereo 44.1-kHz inputs (the tiny models of
`capflow tiny-models`, each length in a fresh process), which must stay flat in the input's length: windows go
through the VAE and the sampler a `window_batch` at a time.

    python benchmarks/edit_speed.py [--steps 50] [--preset small] [--no-memory]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.timing import best_of  # noqa: E402
from finetune.editor import editor_velocity  # noqa: E402
from pretrain.dit import EzAudioDiT, preset  # noqa: E402
from pretrain.flow import start_point  # noqa: E402
from pretrain.sampler import guided_velocity, integrate  # noqa: E402

FRAME_RATE = 44100 / 2048  # Stable Audio Open's Oobleck: 21.5 latent frames per second


def run(name: str, device: str, dtype: torch.dtype, steps: int) -> None:
    torch.manual_seed(0)
    dit = EzAudioDiT(preset(name)).add_source_input().to(device, dtype).eval()
    c, e = dit.config.latent_channels, dit.config.text_dim
    n = round(10 * FRAME_RATE)
    text, null = torch.randn(1, 100, e, device=device), torch.randn(1, 100, e, device=device)
    mask = torch.ones(1, 100, dtype=torch.bool, device=device)
    source, noise = torch.randn(1, c, n, device=device), torch.randn(1, c, n, device=device)

    def generate():
        v = guided_velocity(dit, text=text, text_mask=mask, neg_text=null, neg_mask=mask, scale=5.0, rescale=0.75)
        integrate(v, noise, 0.0, steps)

    def edit(t_start: float, cfg_source: float | None):
        v = editor_velocity(dit, source, text, mask, null, mask, cfg=3.0, cfg_source=cfg_source, rescale=0.5)
        integrate(v, start_point(source, noise, t_start), t_start, max(1, round(steps * (1 - t_start))))

    with torch.no_grad():
        generate()  # warm-up
        gen = best_of(generate)
        print(f"{name} on {device} ({str(dtype).split('.')[-1]}), 10-s clip = {n} frames, {steps} steps at t_start 0:")
        print(f"  generate                      {gen:7.3f} s")
        for t_start in (0.01, 0.5):
            only = best_of(lambda t=t_start: edit(t, None))
            two = best_of(lambda t=t_start: edit(t, 1.5))
            print(f"  edit t_start {t_start:<4} instruction {only:7.3f} s (edit/generate {only / gen:.2f}, 1 - t_start "
                  f"{1 - t_start:.2f}); two-scale {two:7.3f} s (two-scale/instruction-only {two / only:.2f})")


def _peak_rss(minutes: float, models: str, queue) -> None:
    """In a fresh process: edit a `minutes`-long stereo 44.1-kHz clip with a tiny editor; report peak RSS (MB)."""
    import resource

    import numpy as np

    from finetune.editor import EditSampler, InstructionEditor
    from pretrain.pipeline import TextToAudio
    from shards.audio import Audio

    t2a = TextToAudio.from_pretrained(Path(models) / "t2a-untrained")
    editor = InstructionEditor(t2a.dit.add_source_input(), t2a.codec, t2a.text_encoder, EditSampler(steps=2))
    clip = Audio((0.1 * np.random.default_rng(0).standard_normal((2, int(44100 * 60 * minutes)))).astype(np.float32), 44100)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    editor.edit(clip, "Remove the noise", window_batch=4)
    queue.put((before, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024))


def memory() -> None:
    import multiprocessing
    import tempfile

    from capflow.tiny import write_all_tiny_models

    with tempfile.TemporaryDirectory() as tmp:
        write_all_tiny_models(tmp)
        ctx, peaks = multiprocessing.get_context("spawn"), {}
        for minutes in (1, 10):
            queue = ctx.Queue()
            proc = ctx.Process(target=_peak_rss, args=(minutes, tmp, queue))
            proc.start()
            peaks[minutes] = queue.get()
            proc.join()
    (b1, p1), (b10, p10) = peaks[1], peaks[10]
    print(f"peak RSS of an edit (tiny models, stereo 44.1 kHz, window_batch 4): 1 min {p1:.0f} MB (input loaded: "
          f"{b1:.0f}), 10 min {p10:.0f} MB (input loaded: {b10:.0f}); growth beyond the input "
          f"{(p10 - b10) / max(1.0, p1 - b1):.2f}x (flat: ~1)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--preset", default="small")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-RSS part")
    args = parser.parse_args()
    if not args.no_memory:
        memory()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    run(args.preset, "cpu", torch.float32, args.steps)
    if torch.cuda.is_available():
        run("dit-l", "cuda", torch.bfloat16, 200)
    else:
        print("dit-l on GPU: not measured (no CUDA device)")


if __name__ == "__main__":
    main()
