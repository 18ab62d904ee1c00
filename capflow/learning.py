"""Did the demo's models learn? Latent statistics and a nearest-class-mean classifier fitted on real held-out
clips of one sound class (generated latents are classified by their prompt's class), and the held-out flow loss
with the right caption against a wrong one. Shape legend: b batch, c latent channels, n frames.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import torch


class NearestClassMean:
    """Standardised features, each clip assigned to the class whose mean is nearest."""

    def fit(self, x: np.ndarray, labels: list[str]) -> NearestClassMean:
        self.mu, self.sd = x.mean(axis=0), x.std(axis=0) + 1e-9
        z = (x - self.mu) / self.sd
        self.classes = sorted(set(labels))
        self.means = np.stack([z[[lab == c for lab in labels]].mean(axis=0) for c in self.classes])
        return self

    def predict(self, x: np.ndarray) -> list[str]:
        z = (np.atleast_2d(x) - self.mu) / self.sd
        return [self.classes[i] for i in ((z[:, None] - self.means[None]) ** 2).sum(-1).argmin(axis=1)]


def accuracy(clf: NearestClassMean, x: np.ndarray, labels: list[str]) -> float:
    return float(np.mean([p == lab for p, lab in zip(clf.predict(x), labels)]))


def cross_validated(x: np.ndarray, labels: list[str]) -> float:
    """Leave-one-out accuracy of the classifier on the real clips (each clip scored by a classifier fitted
    without it): the bar generated clips are held to."""
    hits = [NearestClassMean().fit(np.delete(x, i, axis=0), labels[:i] + labels[i + 1:]).predict(x[i])[0] == labels[i]
            for i in range(len(labels))]
    return float(np.mean(hits))


# ---- the demo's learning report --------------------------------------------------------------------------
def single_class_latents(latent_dir, split: str = "eval") -> tuple[np.ndarray, list[str], list[str]]:
    """Latents (b, c, n), class and caption of the clips of `split` whose strong labels name one class."""
    from shards.reader import iter_tar_samples, shard_urls

    latents, labels, captions = [], [], []
    for url in shard_urls(latent_dir):
        for _, members in iter_tar_samples(Path(url)):
            meta = json.loads(members["json"])
            classes = {e["label"] for e in meta.get("strong_labels") or []}
            if meta.get("split") == split and len(classes) == 1 and meta.get("captions"):
                latents.append(np.load(io.BytesIO(members["npy"])).astype(np.float32))
                labels.append(classes.pop())
                captions.append(meta["captions"][0])
    return np.stack(latents) if latents else np.zeros((0, 0, 0), np.float32), labels, captions


def latent_features(z: np.ndarray) -> np.ndarray:
    """(c, n) -> per-channel mean and standard deviation over frames (2c,)."""
    return np.concatenate([z.mean(axis=-1), z.std(axis=-1)])


def caption_margin(t2a, latents: np.ndarray, labels: list[str], classes: list[str], draws: int = 8,
                   seed: int = 0) -> dict:
    """Held-out flow loss of each clip with its own caption ("Hum.") against another class's, on the same
    noise and times (all frames generated, no context): the mean of each and the share of clips where the
    right caption's is lower. A model without text scores both alike (margin 0)."""
    x1 = torch.from_numpy(latents)
    right = [f"{lab}." for lab in labels]
    losses = {"right": np.zeros(len(labels)), "wrong": np.zeros(len(labels))}
    for d in range(draws):
        wrong = [f"{classes[(classes.index(lab) + 1 + d % (len(classes) - 1)) % len(classes)]}." for lab in labels]
        g = torch.Generator().manual_seed(seed + d)
        x_t, t, target = t2a.objective.point(x1, torch.randn(x1.shape, generator=g), generator=g)
        for name, texts in (("right", right), ("wrong", wrong)):
            text = text_mask = None
            if t2a.dit.has_text:
                text, text_mask = t2a.text_encoder(texts)
            with torch.no_grad():
                v = t2a.dit(x_t, t, text=text, text_mask=text_mask)
            losses[name] += ((v - target) ** 2).mean(dim=(1, 2)).numpy() / draws
    return {"right": round(float(losses["right"].mean()), 4), "wrong": round(float(losses["wrong"].mean()), 4),
            "right_lower_share": round(float(np.mean(losses["right"] < losses["wrong"])), 3)}


def t2a_report(bundle, latent_dir, out_dir, per_class: int = 4, steps: int = 16, seed: int = 0) -> dict:
    """A bundle's text following on the held-out single-class clips of a latent set: the caption margin, and a
    nearest-class-mean classifier on latent statistics, fitted on the real latents (its leave-one-out accuracy
    is the bar), scoring `per_class` generated latents per class prompt; spectrograms of one decoded clip per
    prompt into `out_dir`."""
    from pretrain.pipeline import TextToAudio
    from pretrain.validation import save_spectrogram

    t2a = TextToAudio.from_pretrained(bundle)
    latents, labels, _ = single_class_latents(latent_dir)
    classes = sorted(set(labels))
    if len(classes) < 2:
        raise ValueError(f"{latent_dir}: fewer than two classes among the held-out single-class clips")
    real = np.stack([latent_features(z) for z in latents])
    prompts = [c for c in classes for _ in range(per_class)]
    duration = latents.shape[-1] / t2a.codec.frame_rate
    generated = t2a.sample_latents([f"{c}." for c in prompts], steps=steps, duration=duration,
                                   seed=[seed + i for i in range(len(prompts))]).numpy()
    clf = NearestClassMean().fit(real, labels)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    waves = t2a.codec.decode(torch.from_numpy(generated[::per_class])).numpy()
    for c, wave in zip(classes, waves):
        save_spectrogram(wave[0], t2a.codec.sample_rate, out_dir / f"{c.lower().replace(' ', '_')}.png", f"{c}.")
    return {"clips": len(labels), "classes": classes,
            "real_accuracy": round(cross_validated(real, labels), 3),
            "generated_accuracy": round(accuracy(clf, np.stack([latent_features(z) for z in generated]), prompts), 3),
            "caption_margin": caption_margin(t2a, latents, labels, classes, seed=seed)}



def write_learning_report(workdir, before, after, latent_dir, codec_dir) -> dict:
    """WORKDIR/report.md + report.json + report/*.png: the codec's held-out reconstruction beside the untrained
    codec's, and `t2a_report` of the model before text training (`before`) and after it (`after`)."""
    workdir = Path(workdir)
    report = {"codec": json.loads((Path(codec_dir) / "capflow.json").read_text()).get("reconstruction"),
              "before": t2a_report(before, latent_dir, workdir / "report" / "before"),
              "after": t2a_report(after, latent_dir, workdir / "report" / "after")}
    (workdir / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    c, rows = report["codec"], []
    for name in ("before", "after"):
        r, m = report[name], report[name]["caption_margin"]
        rows.append(f"| {name} | {r['generated_accuracy']:.2f} | {r['real_accuracy']:.2f} | {m['right']:.4f} | "
                    f"{m['wrong']:.4f} | {m['right_lower_share']:.2f} |")
    pictures = "\n".join(f"| {cls} | ![](report/before/{cls.lower().replace(' ', '_')}.png) | "
                         f"![](report/after/{cls.lower().replace(' ', '_')}.png) |" for cls in report["after"]["classes"])
    (workdir / "report.md").write_text(f"""# What the demo's models learned

Held-out clips: the eval split's clips of one sound class ({report['after']['clips']}, classes
{', '.join(report['after']['classes'])}).

## Codec (`runs/codec/export`)

| | MR-STFT distance | SI-SDR (dB) |
|---|---|---|
| trained | {c['trained']['mrstft']:.3f} | {c['trained']['si_sdr']:.1f} |
| untrained | {c['untrained']['mrstft']:.3f} | {c['untrained']['si_sdr']:.1f} |

## Text to audio, in latent space

A nearest-class-mean classifier on latent statistics (per-channel mean and deviation) is fitted on the real
held-out latents; "real" is its leave-one-out accuracy on them, "generated" its accuracy on latents generated
from each class's name ("Hum."), chance {1 / len(report['after']['classes']):.2f}. The flow loss of each held-out clip
with its own caption ("right") and another class's ("wrong"), on the same noise and times.

| model | generated | real | loss, right caption | loss, wrong caption | right lower |
|---|---|---|---|---|---|
{chr(10).join(rows)}

"before": the mask-stage export (no text modules: both captions score alike); "after": the align export.

## Generated, decoded (one clip per prompt)

| prompt | before | after |
|---|---|---|
{pictures}
""")
    return report
