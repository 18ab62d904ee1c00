"""Which kernels make the dit-l training step fastest, side by side on one block, in one run (GPU only; without
CUDA it prints "not measured").

One dit-l out-block (long skip, no text: the mask stage), forward + backward at batch 32 x 500 frames (10 s),
bf16 autocast over fp32 weights as the trainer runs it, under:
- eager, and torch.compile with PyTorch's own SDPA choice (cuDNN attention on an H200 with torch 2.11), then
  with cuDNN, flash and memory-efficient attention forced;
- inductor writing a concatenation as slices instead of one masked pointwise kernel (the GEGLU backward's);
- the GEGLU's input projection as two GEMMs over the halves of its weight (same parameters), so that backward
  writes the two halves' gradients apart instead of one kernel that concatenates them (H200: 0.97x, slower).
Prints ms per block, the same x 25 blocks (the step's share in blocks), the ratio to the default compiled
block, each compile's seconds, and the largest output difference from eager (all bf16: ~1e-2 is rounding).

    python benchmarks/step_kernels.py
"""

from __future__ import annotations

import argparse
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch
import torch._functorch.config
import torch._inductor.config
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from pretrain.blocks import DiTBlock, rotary_tables  # noqa: E402
from pretrain.dit import preset  # noqa: E402

BLOCKS = 25  # dit-l: 12 in-blocks, the middle block, 12 out-blocks


def sdpa_context(backend: str):
    """The SDPA backend to use ("default": PyTorch's own priority)."""
    if backend == "default":
        return nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([{"cudnn": SDPBackend.CUDNN_ATTENTION, "flash": SDPBackend.FLASH_ATTENTION,
                         "efficient": SDPBackend.EFFICIENT_ATTENTION}[backend]])


class BlockStep:
    """Forward + backward of one dit-l block on fixed inputs, as the trainer runs it (bf16 autocast)."""

    def __init__(self, device: str = "cuda", name: str = "dit-l", b: int = 32, n: int = 500):
        cfg = preset(name, text_dim=None)
        self.device = device
        torch.manual_seed(0)
        self.block = DiTBlock(cfg.width, cfg.num_heads, cfg.mlp_ratio, cfg.adaln, cfg.sola_rank, cfg.sola_alpha,
                              text=False, skip=True).to(device)
        with torch.no_grad():  # random modulation (zero-initialised AdaLN would make the gates trivial)
            for p in self.block.adaln.parameters():
                p.normal_(0, 0.02)
        d = cfg.width
        g = torch.Generator(device=device).manual_seed(0)
        self.x = torch.randn(b, n, d, device=device, generator=g, dtype=torch.bfloat16).requires_grad_()
        self.skip = torch.randn(b, n, d, device=device, generator=g, dtype=torch.bfloat16).requires_grad_()
        self.temb = torch.randn(b, d, device=device, generator=g, dtype=torch.bfloat16)
        self.shared = torch.randn(b, 6 * d, device=device, generator=g, dtype=torch.bfloat16)
        self.rope = rotary_tables(n, d // cfg.num_heads, device)

    def run(self, fn) -> torch.Tensor:
        with torch.autocast(self.device, dtype=torch.bfloat16):
            out = fn(self.x, self.temb, self.shared, self.rope, self.skip)
        out.float().pow(2).mean().backward()
        return out.detach()

    def time(self, fn, iters: int = 20) -> float:
        """Seconds per forward + backward, the median of CUDA-event timings after 3 warm-up runs."""
        for _ in range(3):
            self.run(fn)
        if self.device != "cuda":  # the --cpu-smoke check of this script
            start = time.perf_counter()
            self.run(fn)
            return time.perf_counter() - start
        events = [torch.cuda.Event(enable_timing=True) for _ in range(iters + 1)]
        events[0].record()
        for e in events[1:]:
            self.run(fn)
            e.record()
        torch.cuda.synchronize()
        times = sorted(a.elapsed_time(b) / 1e3 for a, b in zip(events, events[1:]))
        return times[len(times) // 2]


def split_geglu(mlp: torch.nn.Module) -> None:
    """Make the GEGLU's input projection two GEMMs over its weight's halves (the same parameters and math)."""
    def forward(x: torch.Tensor) -> torch.Tensor:
        inner, w, b = mlp.proj_out.in_features, mlp.proj_in.weight, mlp.proj_in.bias
        h, gate = F.linear(x, w[:inner], b[:inner]), F.linear(x, w[inner:], b[inner:])
        return mlp.proj_out(h * F.gelu(gate))

    mlp.forward = forward


def measure(step: BlockStep, reference: torch.Tensor | None, label: str, compiled: bool, sdpa: str,
            rows: dict, base: str, options: dict | None = None) -> None:
    torch._dynamo.reset()  # a fresh trace under this setting's SDPA backend
    fn = torch.compile(step.block, options=options) if compiled else step.block
    with sdpa_context(sdpa):
        start = time.perf_counter()
        out = step.run(fn)  # the compile
        if step.device == "cuda":
            torch.cuda.synchronize()
        compile_s = time.perf_counter() - start
        seconds = step.time(fn)
    diff = 0.0 if reference is None else (out.float() - reference.float()).abs().max().item()
    rows[label] = seconds
    ratio = f"{rows[base] / seconds:6.2f}x" if base in rows else "      -"
    print(f"{label:<36}{seconds * 1e3:9.2f}{seconds * BLOCKS * 1e3:12.1f}  {ratio}{compile_s:10.1f}{diff:11.2e}",
          flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cpu-smoke", action="store_true", help="run this script's code on a tiny block on the CPU")
    args = parser.parse_args()
    if args.cpu_smoke:
        step = BlockStep("cpu", "tiny", 2, 50)
    elif not torch.cuda.is_available():
        print("dit-l block kernels (SDPA backends, split GEGLU) at batch 32 x 10 s: not measured (no CUDA)")
        return
    else:
        step = BlockStep()
    name = torch.cuda.get_device_name() if step.device == "cuda" else "CPU smoke"
    print(f"{name}: one dit-l out-block, bf16 autocast, batch 32 x 500 frames, forward + backward (median of 20)")
    print(f"{'setting':<36}{'ms/block':>9}{'ms x 25':>12}  {'vs comp.':>7}{'compile s':>10}{'max |diff|':>11}")
    # inductor's graph caches key a graph without the SDPA backend it was traced under: a cached graph would
    # run the first row's attention kernel in every row
    torch._inductor.config.fx_graph_cache = False
    torch._functorch.config.enable_autograd_cache = False
    rows: dict = {}
    base = "compiled, PyTorch's SDPA choice"
    reference = step.run(step.block)
    measure(step, None, "eager", False, "default", rows, base)
    measure(step, reference, base, True, "default", rows, base)
    for sdpa in ("cudnn", "flash", "efficient") if step.device == "cuda" else ():
        try:
            measure(step, reference, f"compiled, {sdpa} SDPA", True, sdpa, rows, base)
        except Exception as error:  # noqa: BLE001 - a backend this card or build lacks is a row, not a crash
            print(f"compiled, {sdpa} SDPA: unavailable ({type(error).__name__}: {str(error).splitlines()[0][:100]})")
    # inductor writes a two-input cat as one masked pointwise kernel that runs both inputs' math on every element:
    # for the GEGLU backward (the cat of its halves' gradients) that is gelu and gelu' twice over 16000 x 8192
    # (11 ms of the 128-ms H200 step, 3x its traffic bound); as slices, each half is written where it belongs
    cats = {k: 1 for k in ("max_complex_pointwise_cat_inputs", "max_pointwise_cat_inputs")
            if hasattr(torch._inductor.config, k)}
    measure(step, reference, "compiled, cats written as slices", True, "default", rows, base, cats)
    split_geglu(step.block.mlp)
    measure(step, reference, "compiled, GEGLU as two GEMMs", True, "default", rows, base)


if __name__ == "__main__":
    main()
