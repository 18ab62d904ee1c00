"""Small helpers shared by tests."""

import io
import tarfile
from pathlib import Path

CHANNELS, FRAMES = 8, 40  # the tiny codec's latent channels; 4 s at 10 latent frames/s


def rewrite_tar(path: Path, replace: dict[str, bytes | None]) -> None:
    """Rewrite a tar in place, replacing members' bytes (None drops the member); others stay as they were."""
    src = tarfile.open(fileobj=io.BytesIO(Path(path).read_bytes()))
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as dst:
        for info in src.getmembers():
            data = src.extractfile(info).read()
            if info.name in replace:
                if replace[info.name] is None:
                    continue
                data = replace[info.name]
                info.size = len(data)
            dst.addfile(info, io.BytesIO(data))
    Path(path).write_bytes(buf.getvalue())


def two_class_set(directory, clips: int = 32, seconds: float = 1.0, rate: int = 16000, seed: int = 0) -> Path:
    """A shard set of single-source clips of two procedural classes (sine tones, noise), labels and captions."""
    import numpy as np

    from shards import audio
    from shards import format as fmt
    from shards.manifest import open_shard_set, write_manifest
    from shards.writer import ShardWriter

    rng = np.random.default_rng(seed)
    directory = Path(directory)
    open_shard_set(directory, {"two_class_set": {"clips": clips, "seed": seed}})
    with ShardWriter(directory, "audio", 0) as w:
        for i in range(clips):
            n = int(seconds * rate)
            t = np.arange(n) / rate
            if i % 2:
                wave, label = 0.3 * np.sin(2 * np.pi * rng.uniform(300, 1200) * t), "Sine tone"
            else:
                wave, label = 0.1 * rng.standard_normal(n), "Noise burst"
            key = f"two-clip{seed}x{i:04d}"
            meta = {"key": key, "source": "two", "id": key, "duration": seconds, "sample_rate": rate, "channels": 1,
                    "labels": [label], "captions": [f"A {label.lower()}."], "candidates": []}
            w.write(key, {fmt.META: meta, fmt.AUDIO: audio.encode_flac(audio.Audio(wave[None].astype(np.float32), rate))})
    write_manifest(directory)
    return directory


def latent_set(directory: Path, n: int = 16, seed: int = 0) -> Path:
    """A latent shard set of structured synthetic latents (smooth per-channel sinusoids), with provenance."""
    import numpy as np

    from shards.manifest import open_shard_set, write_manifest
    from shards.writer import ShardSetWriter

    rng = np.random.default_rng(seed)
    t = np.arange(FRAMES) / FRAMES
    open_shard_set(directory, {"synthetic": seed}, kind="latent")
    with ShardSetWriter(directory, prefix="latent", max_count=4) as w:
        for i in range(n):
            freq = rng.integers(1, 4, size=(CHANNELS, 1))
            z = np.sin(2 * np.pi * freq * t + rng.uniform(0, 2 * np.pi, (CHANNELS, 1))).astype(np.float16)
            w.write(f"syn-{i:03d}", {"npy": z, "json": {"key": f"syn-{i:03d}", "duration": 4.0,
                                                         "captions": [f"sound number {i % 3}"],
                                                         "latent": {"frames": FRAMES, "valid_frames": FRAMES - i % 5}}})
    codec = {"pretrained": "unused", "subfolder": None, "sample_posterior": False,
             "latent_mean": [0.0] * CHANNELS, "latent_std": [1.0] * CHANNELS}
    write_manifest(directory, extra={"codec": codec, "frame_rate": 10.0, "latent_channels": CHANNELS})
    return directory
