"""`capflow evaluate`: generated audio (and its reference) → metrics with their protocol → JSON + Markdown + PNG.

Inputs (generated and reference alike): a folder of audio files (id = path without suffix), a JSONL/CSV
manifest (`id, path, caption, reference, source`; paths relative to the manifest), or a shard set (id = key,
caption = first kept caption). Generated and reference clips are matched by id. Each number matches a
reference toolkit on the same files: FD/KL/IS audioldm_eval's (its audio preparation, CNN14 logits for KL/IS),
FAD/FAD∞ fadtk's; the report names the toolkit, the preparation, the checkpoint and its sha256. Every clip
is embedded once per backbone (groups reuse it), and the reference outputs are cached in a file keyed by
backbone, checkpoint sha256, protocol and the reference clips (ids and contents: path, size, mtime), so a test set such as AudioCaps' 4,875
clips is embedded once.
"""

from __future__ import annotations

import csv
import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from tqdm.auto import tqdm

from shards import audio
from shards.config import Strict, config_dict
from shards.writer import write_json_atomic

from . import metrics as M
from .backbones import load_backbone
from .protocols import get_protocol

METRICS = {"fd": "panns-cnn14", "kl": "panns-cnn14", "is": "panns-cnn14", "fad": "vggish", "fad_inf": "vggish",
           "clap": "clap", "clap_a": "clap", "clap_src": "clap", "lsd": None, "mel": None, "sdr": None, "sdri": None, "si_sdr": None}
# the official checkpoints (downloaded once from their publishers, checked: backbones.OFFICIAL) and CLAP's hub id
DEFAULT_BACKBONES = {"panns-cnn14": "Cnn14_16k_mAP=0.438.pth", "vggish": "vggish-10086976.pth",
                     "clap": "laion/larger_clap_general"}
# FD/KL/IS as audioldm_eval computes them, FAD/FAD∞ as fadtk does
DEFAULT_PROTOCOLS = {"panns-cnn14": "audioldm_eval", "vggish": "fadtk"}


class EvalConfig(Strict):
    generated: str
    reference: str | None = None
    captions: str | None = None  # JSONL/CSV with id, caption (text-CLAP), when the generated input has none
    metrics: list[str] = ["fd", "kl", "is", "fad", "clap"]
    models: str | None = None  # a folder laid out like `capflow tiny-models` output: panns-cnn14/, vggish/, clap/
    backbones: dict[str, str] = DEFAULT_BACKBONES  # name -> hub id, directory or checkpoint file
    # the reference toolkit whose audio preparation each backbone is fed with (evaluation/protocols.py)
    protocols: dict[str, str] = DEFAULT_PROTOCOLS
    fad_inf_seed: int | None = 0  # fadtk draws unseeded; a seed makes FAD∞ repeatable (null: unseeded, as fadtk)
    out: str = "eval"
    cache_dir: str | None = None  # default: OUT/cache
    device: Literal["auto", "cpu", "cuda"] = "auto"
    strict: bool = False  # refuse, before any backbone loads, a generated set with an unreadable or empty clip


@dataclass
class Clip:
    id: str
    source: str | Path | bytes  # a path or encoded bytes
    caption: str | None = None
    reference: str | None = None  # a paired ground truth's path (manifest), for LSD/mel/SDR
    mixture: str | None = None  # the input (manifest `source`): the mixture for SDRi, the edited clip for clap_src
    group: str | None = None  # manifest `group` (e.g. an edit operation): metrics are also reported per group
    seconds: float | None = None  # manifest `seconds`: what making the clip took

    def load(self) -> audio.Audio:
        return audio.decode(self.source, name=self.id if isinstance(self.source, bytes) else None)


def collect(path: str | Path) -> dict[str, Clip]:
    """Clips by id from a folder, a JSONL/CSV manifest or a shard set."""
    path = Path(path)
    if path.is_dir() and (path / "manifest.json").is_file():
        from shards.reader import make_pipeline

        return {s["key"]: Clip(s["key"], s["raw_flac"], (s["captions"] or [None])[0])
                for s in make_pipeline(path, decoder=_RawAudio())}
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if audio.is_audio_path(p) and p.is_file())
        if not files:
            raise FileNotFoundError(f"no audio files under {path}")
        return {str(p.relative_to(path).with_suffix("")): Clip(str(p.relative_to(path).with_suffix("")), p) for p in files}
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not a folder of audio, a manifest (.jsonl/.csv) or a shard set")
    rows = ([json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.suffix == ".jsonl"
            else list(csv.DictReader(open(path, newline=""))))
    root = path.parent
    out = {}
    for n, row in enumerate(rows):
        if "path" not in row:
            raise ValueError(f"{path}: row {n + 1} has no 'path' field")
        clip_id = str(row.get("id") or Path(row["path"]).with_suffix(""))
        out[clip_id] = Clip(clip_id, root / row["path"], row.get("caption"),
                            str(root / row["reference"]) if row.get("reference") else None,
                            str(root / row["source"]) if row.get("source") else None, row.get("group") or None,
                            float(row["seconds"]) if row.get("seconds") not in (None, "") else None)
    return out


class _RawAudio:
    """Shard samples with their FLAC bytes undecoded (decoded later at each backbone's rate)."""

    def __init__(self):
        from shards.reader import SampleDecoder

        self.decoder = SampleDecoder(decode_audio=False)

    def __call__(self, sample: dict) -> dict:
        return self.decoder(sample) | {"raw_flac": sample["flac"]}


def _captions(path: str | None) -> dict[str, str]:
    """id -> caption of a JSONL/CSV/TSV file with `id` and `caption` columns (a `path` column is not needed), or
    of anything `collect` reads (a shard set)."""
    if not path:
        return {}
    p = Path(path)
    if p.is_file() and p.suffix.lower() in (".jsonl", ".csv", ".tsv"):
        from shards.cli import read_rows

        rows = read_rows(p)
        if rows and not {"id", "caption"} <= set(rows[0]):
            raise ValueError(f"--captions {p}: needs `id` and `caption` columns, found {sorted(rows[0])}")
        return {str(r["id"]): r["caption"] for r in rows if r.get("caption")}
    return {c.id: c.caption for c in collect(path).values() if c.caption}


def _backbone_ref(cfg: EvalConfig, name: str) -> str:
    if cfg.models:
        return str(Path(cfg.models) / name)
    return cfg.backbones.get(name) or DEFAULT_BACKBONES[name]


class Embedded:
    """One backbone's outputs per clip, by role ("generated", "reference", "source") and id: each clip is
    embedded once however many groups or metrics use it. Every output is 2-D per clip: CNN14 and CLAP one row,
    VGGish one row per 0.96-s example."""

    def __init__(self, backbone, batch: int = 16):
        self.backbone, self.batch = backbone, batch
        self.outputs: dict[str, dict[str, dict[str, np.ndarray]]] = {}
        self.skipped: dict[str, dict[str, str]] = {}
        self.cached = False  # the reference outputs came from the cache file

    def add(self, role: str, clips: list[Clip]) -> list[str]:
        """Embeds the clips not yet embedded; returns the ids of `clips` that have outputs, in order."""
        outputs, skipped = self.outputs.setdefault(role, {}), self.skipped.setdefault(role, {})
        todo = [c for c in clips if c.id not in outputs and c.id not in skipped]
        pending: list[tuple[str, np.ndarray]] = []

        def flush():
            if not pending:
                return
            out = self.backbone([w for _, w in pending])
            for j, (clip_id, _) in enumerate(pending):
                rows = out["clip"] == j if "clip" in out else slice(j, j + 1)
                outputs[clip_id] = {k: v[rows] for k, v in out.items() if k != "clip"}
            pending.clear()

        for clip in tqdm(todo, desc=f"{role} {self.backbone.name}", unit="clip", leave=False):
            try:
                pending.append((clip.id, self.backbone.prepare(clip.load())))
            except audio.AudioError as e:
                skipped[clip.id] = str(e)
            if len(pending) == self.batch:
                flush()
        flush()
        return [c.id for c in clips if c.id in outputs]

    def stack(self, role: str, ids: list[str], key: str = "embedding") -> np.ndarray:
        return np.concatenate([self.outputs[role][i][key] for i in ids])


def _fingerprint(clip: Clip) -> str:
    """What a clip's audio is, for the cache key: a file's resolved path, size and modification time (another
    folder, or a file rewritten, is another key), or the sha256 of encoded bytes (shard sets)."""
    if isinstance(clip.source, bytes):
        return hashlib.sha256(clip.source).hexdigest()
    path = Path(clip.source)
    try:
        st = path.stat()
    except OSError:
        return f"{path}:missing"
    return f"{path.resolve()}:{st.st_size}:{st.st_mtime_ns}"


def _reference(cfg: EvalConfig, embedded: Embedded, clips: list[Clip]) -> list[str]:
    """The reference clips' outputs into `embedded`, from the cache file when an earlier run wrote them (keyed by
    backbone, checkpoint sha256, preparation protocol and each clip's id and fingerprint); returns the ids that
    decoded."""
    backbone = embedded.backbone
    cache = Path(cfg.cache_dir or Path(cfg.out) / "cache")
    protocol = backbone.protocol.name if backbone.protocol else None
    key = hashlib.sha256(json.dumps([backbone.name, backbone.sha256, protocol,
                                     sorted((c.id, _fingerprint(c)) for c in clips)]).encode())
    path = cache / f"{backbone.name}-{key.hexdigest()[:16]}.npz"
    if path.is_file() and "reference" not in embedded.outputs:
        data = np.load(path, allow_pickle=False)
        ids, bounds = [str(i) for i in data["ids"]], np.concatenate([[0], np.cumsum(data["rows"])])
        embedded.outputs["reference"] = {
            clip_id: {k: data[k][bounds[n]:bounds[n + 1]] if k == "embedding" else data[k][n:n + 1]
                      for k in data.files if k not in ("ids", "rows", "skipped")} for n, clip_id in enumerate(ids)}
        embedded.skipped["reference"] = {str(i): "skipped when the cache was written" for i in data["skipped"]}
        embedded.cached = True
        return [c.id for c in clips if c.id in embedded.outputs["reference"]]
    done = embedded.outputs.get("reference", {})
    fresh = any(c.id not in done for c in clips)  # a group's subset of an embedded set writes no cache of its own
    ids = embedded.add("reference", clips)
    if ids and fresh and not path.is_file():
        cache.mkdir(parents=True, exist_ok=True)
        outputs = embedded.outputs["reference"]
        arrays = {k: embedded.stack("reference", ids, k) for k in outputs[ids[0]]}
        arrays |= {"ids": np.array(ids), "rows": np.array([len(outputs[i]["embedding"]) for i in ids]),
                   "skipped": np.array([c.id for c in clips if c.id in embedded.skipped["reference"]], dtype=str)}
        np.savez(path.with_suffix(".tmp.npz"), **arrays)
        path.with_suffix(".tmp.npz").replace(path)
    return ids


def evaluate(cfg: EvalConfig) -> dict:
    """Every requested metric with its protocol; writes OUT/report.json, OUT/report.md and plots."""
    unknown = sorted(set(cfg.metrics) - set(METRICS))
    if unknown:
        raise ValueError(f"unknown metrics {unknown}; valid: {sorted(METRICS)}")
    for name in cfg.protocols.values():
        get_protocol(name)
    device = ("cuda" if __import__("torch").cuda.is_available() else "cpu") if cfg.device == "auto" else cfg.device
    generated = collect(cfg.generated)
    for clip_id, caption in _captions(cfg.captions).items():
        if clip_id in generated:
            generated[clip_id].caption = caption
    if cfg.strict:
        check_generated(generated)
    reference = collect(cfg.reference) if cfg.reference else {}
    needs_reference = {"fd", "kl", "fad", "fad_inf", "clap_a", "lsd", "mel"} & set(cfg.metrics)
    if needs_reference and not reference and not any(c.reference for c in generated.values()):
        raise ValueError(f"metrics {sorted(needs_reference)} need --reference (or a manifest with a reference column)")
    if "clap" in cfg.metrics and not any(c.caption for c in generated.values()):
        raise ValueError("text-CLAP needs captions (the target caption of each clip): a manifest with a caption column, "
                         "a shard set, or --captions")
    if not reference and any(c.reference for c in generated.values()):  # paired ground truths are the reference set
        reference = {i: Clip(i, c.reference) for i, c in generated.items() if c.reference}
    paired_metrics = sorted({"kl", "clap_a", "lsd", "mel"} & set(cfg.metrics))
    if paired_metrics and reference and not set(generated) & set(reference):  # before anything is embedded
        raise ValueError(f"{', '.join(paired_metrics)} pair generated and reference clips by id, and no id is shared "
                         f"(generated e.g. {sorted(generated)[:2]}, reference e.g. {sorted(reference)[:2]}); name the "
                         "generated clips by the reference's ids (generate --prompts-file with an id column)")
    report = {"generated": cfg.generated, "reference": cfg.reference, "n_generated": len(generated),
              "n_reference": len(reference), "config": config_dict(cfg)}
    start = time.perf_counter()
    embedded: dict[str, Embedded] = {}
    report["metrics"] = _metrics(cfg, generated, reference, embedded, device)
    groups = sorted({c.group for c in generated.values() if c.group})
    if groups:  # e.g. edit operations: every metric per group too, against that group's references (no clip embedded twice)
        report["groups"] = {}
        for g in groups:
            ids = [i for i, c in generated.items() if c.group == g]
            report["groups"][g] = _metrics(cfg, {i: generated[i] for i in ids},
                                           {i: reference[i] for i in ids if i in reference}, embedded, device)
    made = [c.seconds for c in generated.values() if c.seconds is not None]
    if made:
        report["making_seconds_per_clip"] = round(float(np.mean(made)), 4)
    report["seconds"] = round(time.perf_counter() - start, 3)
    report["seconds_per_clip"] = round(report["seconds"] / max(1, len(generated)), 4)
    _write(Path(cfg.out), report)
    return report


def check_generated(generated: dict[str, Clip]) -> None:
    """Every generated clip decodes (finite samples, not empty), or one line naming the first that does not."""
    bad = {}
    for clip_id, clip in tqdm(generated.items(), desc="checking generated clips", unit="clip", leave=False):
        try:
            if clip.load().samples.size == 0:
                bad[clip_id] = "empty"
        except (audio.AudioError, OSError) as e:
            bad[clip_id] = str(e).splitlines()[0] if str(e) else type(e).__name__
    if bad:
        first = next(iter(bad))
        raise ValueError(f"--strict: {len(bad)} of {len(generated)} generated clips cannot be scored (first: "
                         f"{first}: {bad[first]}); fix or remove them, or drop --strict to score the rest")


def skipped_generated(report: dict) -> dict[str, str]:
    """The generated clips some metric could not score (unreadable, empty, non-finite), with the reason."""
    out: dict[str, str] = {}
    for result in report["metrics"].values():
        out.update(result.get("skipped", {}).get("generated", {}))
    return out


def _metrics(cfg: EvalConfig, generated: dict[str, Clip], reference: dict[str, Clip], embedded: dict[str, Embedded],
             device: str) -> dict:
    """The requested metrics over one set of generated clips (backbones loaded and clips embedded once, in `embedded`)."""
    metrics = {}
    per_backbone: dict[str, list[str]] = {}
    for m in cfg.metrics:
        per_backbone.setdefault(METRICS[m], []).append(m)
    for name, wanted in per_backbone.items():
        if name is None:
            metrics.update(_signal_metrics(generated, reference, wanted))
            continue
        if name not in embedded:
            embedded[name] = Embedded(load_backbone(name, _backbone_ref(cfg, name), device, cfg.protocols.get(name)))
        emb = embedded[name]
        gen_ids = emb.add("generated", list(generated.values()))
        gen_skipped = {i: emb.skipped["generated"][i] for i in generated if i in emb.skipped["generated"]}
        ref_ids = _reference(cfg, emb, list(reference.values())) if reference and name != "clap" else None
        skipped = {"generated": gen_skipped}
        common = {**emb.backbone.describe(), "n_clips": len(gen_ids), "n_skipped": len(gen_skipped)}
        if ref_ids is not None:
            skipped["reference"] = {i: emb.skipped["reference"][i] for i in reference if i in emb.skipped["reference"]}
            common |= {"n_reference": len(ref_ids), "reference_cached": emb.cached}
        for m in wanted:
            metrics[m] = {**_model_metric(m, cfg, emb, gen_ids, ref_ids, generated, reference), **common,
                          "skipped": skipped}
    if "clap" in metrics and "clap_src" in metrics:  # Paissan et al.'s editing trade-off: text + audio CLAP
        metrics["clap_sum"] = {"value": metrics["clap"]["value"] + metrics["clap_src"]["value"],
                               "of": "clap + clap_src", "backbone": "clap", "sample_rate": metrics["clap"].get("sample_rate"),
                               "n_clips": metrics["clap"].get("n_clips")}
    return metrics


def _stats(emb: Embedded, role: str, ids: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance of a set's embeddings: fadtk's per-file online statistics under its protocol,
    audioldm_eval's np.mean/np.cov of all rows otherwise."""
    if emb.backbone.protocol and emb.backbone.protocol.name == "fadtk":
        return M.online_stats([emb.outputs[role][i]["embedding"] for i in ids])
    return M.gaussian_stats(emb.stack(role, ids))


def _model_metric(m: str, cfg: EvalConfig, emb: Embedded, gen_ids: list[str], ref_ids: list[str] | None,
                  generated: dict[str, Clip], reference: dict[str, Clip]) -> dict:
    protocol = emb.backbone.protocol.name if emb.backbone.protocol else None
    if m in ("fd", "fad"):
        toolkit = {"audioldm_eval": "audioldm_eval calculate_fid", "fadtk": "fadtk FrechetAudioDistance.score"}
        gen, ref = _stats(emb, "generated", gen_ids), _stats(emb, "reference", ref_ids)
        return {"value": M.frechet_distance(*gen, *ref), "matches": toolkit.get(protocol)}
    if m == "fad_inf":
        ref = _stats(emb, "reference", ref_ids)
        result = M.fad_inf(emb.stack("generated", gen_ids), *ref, seed=cfg.fad_inf_seed)
        return {"value": result["score"], "slope": result["slope"], "r2": result["r2"], "min_n": result["min_n"],
                "steps": result["steps"], "seed": result["seed"], "matches": "fadtk FrechetAudioDistance.score_inf"}
    if m == "is":
        score = M.inception_score(emb.stack("generated", gen_ids, "logits"))
        return {"value": score["is_mean"], "std": score["is_std"], "splits": 10, "shuffle_seed": 2020,
                "input": "CNN14 logits (fc_audioset before the sigmoid)", "matches": "audioldm_eval calculate_isc"}
    if m == "kl":
        shared = set(ref_ids)
        paired = [i for i in gen_ids if i in shared]
        if not paired:
            raise ValueError("KL pairs generated and reference clips by id, and no id is shared")
        result = M.kl_divergence(emb.stack("generated", paired, "logits"), emb.stack("reference", paired, "logits"))
        fraction = len(paired) / len(gen_ids)
        return {"value": result["kl_softmax"], "kl_sigmoid": result["kl_sigmoid"], "n_pairs": len(paired),
                "paired_fraction": round(fraction, 4),
                "input": "CNN14 logits (fc_audioset before the sigmoid), paired by id; value = KL (softmax), "
                         "kl_sigmoid = KL_Sigmoid", "matches": "audioldm_eval calculate_kl",
                # audioldm_eval pairs by file name with its extension and reports -1 below 99 % paired; capflow pairs
                # by id (the name without extension, so x.wav pairs with x.flac) and reports the fraction instead
                "pairing": "by id (name without extension); audioldm_eval pairs by name with extension and returns "
                           "-1 when under 99 % of the clips pair" + (f": here {fraction:.1%} paired, so it would "
                                                                   "print -1" if fraction < 0.99 else "")}
    if m == "clap":
        scored = [i for i in gen_ids if generated[i].caption]
        if not scored:
            raise ValueError("text-CLAP needs captions: a manifest with a caption column, a shard set, or --captions")
        texts = emb.backbone.texts([generated[i].caption for i in scored])
        per_clip = (texts * emb.stack("generated", scored)).sum(axis=1)
        return {"value": float(per_clip.mean()), "per_clip": dict(zip(scored, map(float, per_clip))),
                "n_pairs": len(scored), "n_without_caption": len(gen_ids) - len(scored)}
    if m in ("clap_a", "clap_src"):  # audio-to-audio: to the paired reference, or to the input that was edited
        role = "reference" if m == "clap_a" else "source"
        pairs = [i for i in gen_ids if (i in reference if m == "clap_a" else generated[i].mixture)]
        if not pairs:
            raise ValueError(f"{m} needs " + ("references paired by id" if m == "clap_a" else "a manifest `source` column"))
        others = [reference[i] if m == "clap_a" else Clip(i, generated[i].mixture) for i in pairs]
        done = set(emb.add(role, others))
        pairs = [i for i in pairs if i in done]
        per_clip = (emb.stack(role, pairs) * emb.stack("generated", pairs)).sum(axis=1)
        return {"value": float(per_clip.mean()), "per_clip": dict(zip(pairs, map(float, per_clip))), "n_pairs": len(pairs)}
    raise AssertionError(m)


def _signal_metrics(generated: dict[str, Clip], reference: dict[str, Clip], wanted: list[str]) -> dict:
    """Paired waveform metrics at the reference's rate (the generated clip is resampled to it)."""
    values: dict[str, list] = {m: [] for m in wanted}
    for clip_id, clip in generated.items():
        ref_clip = reference.get(clip_id) or (Clip(clip_id, clip.reference) if clip.reference else None)
        if ref_clip is None:
            continue
        ref = audio.to_mono(ref_clip.load())
        est = audio.resample(audio.to_mono(clip.load()), ref.sample_rate).samples[0]
        r = ref.samples[0]
        n = min(len(r), len(est))
        r, est = r[:n], est[:n]
        for m in wanted:
            if m == "lsd":
                values[m].append(M.log_spectral_distance(r, est))
            elif m == "mel":
                values[m].append(M.mel_distance(r, est, ref.sample_rate))
            elif m == "sdr":
                values[m].append(M.sdr(r, est))
            elif m == "si_sdr":
                values[m].append(M.si_sdr(r, est))
            elif m == "sdri" and clip.mixture:
                mix = audio.resample(audio.to_mono(audio.decode(clip.mixture)), ref.sample_rate).samples[0][:n]
                values[m].append(M.sdr_improvement(r, est, mix))
    protocol = {"backbone": None, "sample_rate": "the reference's", "crop": "both cut to the shorter, mono"}
    return {m: {"value": float(np.mean(v)) if v else None, "n_clips": len(v), **protocol} for m, v in values.items()}


def _write(out: Path, report: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "report.json", report)
    lines = ["| metric | value | matches | backbone | checkpoint sha256 | sample rate | clips | skipped (generated / reference) |",
             "|---|---|---|---|---|---|---|---|"]
    for name, r in report["metrics"].items():
        value = "n/a" if r.get("value") is None else f"{r['value']:.5g}"
        skipped = r.get("skipped", {})
        lines.append(f"| {name} | {value} | {r.get('matches') or '-'} | {r.get('backbone') or '-'} | {(r.get('sha256') or '-')[:12]} | "
                     f"{r.get('sample_rate')} | {r.get('n_clips')} | {len(skipped.get('generated', {}))} / "
                     f"{len(skipped.get('reference', {}))} |")
    groups = report.get("groups") or {}
    if groups:
        names = sorted(groups)
        lines += ["", "| metric | all | " + " | ".join(names) + " |", "|---|---|" + "---|" * len(names)]
        for name, r in report["metrics"].items():
            cells = [groups[g].get(name, {}).get("value") for g in names]
            lines.append(f"| {name} | " + " | ".join("n/a" if v is None else f"{v:.5g}" for v in [r.get("value"), *cells])
                         + " |")
    made = f" Making each clip took {report['making_seconds_per_clip']} s." if "making_seconds_per_clip" in report else ""
    preparations = {r["protocol"]: r["preparation"] for r in report["metrics"].values() if r.get("protocol")}
    lines += [""] + [f"- audio preparation `{k}`: {v}" for k, v in sorted(preparations.items())]
    lines += ["", f"{report['n_generated']} generated clips, {report['n_reference']} reference clips, "
              f"{report['seconds_per_clip']} s per clip to evaluate.{made}"]
    if {"fd", "kl", "is"} & set(report["metrics"]):
        lines += ["", "FD, KL and IS are on PANNs CNN14 (16 kHz), the backbone the published text-to-audio results "
                  "(AudioLDM, Tango, EzAudio) were computed with; audioldm_eval's current default backbone is MERT, "
                  "whose numbers are not comparable with those."]
    if skipped := skipped_generated(report):
        lines += ["", f"{len(skipped)} generated clips could not be scored: "
                  + "; ".join(f"{k}: {v}" for k, v in list(skipped.items())[:10])]
    (out / "report.md").write_text("\n".join(lines) + "\n")
    per_clip = {name: r["per_clip"] for name, r in report["metrics"].items() if r.get("per_clip")}
    if per_clip:  # one row per clip, a column per metric that has per-clip values (as fadtk writes them)
        ids = sorted({i for values in per_clip.values() for i in values})
        with open(out / "per_clip.csv", "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["id", *per_clip])
            writer.writerows([i, *(values.get(i, "") for values in per_clip.values())] for i in ids)
    clap = report["metrics"].get("clap", {}).get("per_clip")
    clap_a = report["metrics"].get("clap_a", {}).get("per_clip")
    if not clap:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.2), dpi=100)
    ax.hist(list(clap.values()), bins=np.linspace(-1, 1, 41))
    ax.set(title=f"text-CLAP per clip (N={len(clap)})", xlabel="cosine", ylabel="clips")
    fig.tight_layout()
    fig.savefig(out / "clap_per_clip.png")
    plt.close(fig)
    shared = sorted(set(clap) & set(clap_a or {}))
    if shared:  # editing: following the text (CLAP) against staying close to the source (CLAP-A)
        fig, ax = plt.subplots(figsize=(4.5, 4), dpi=100)
        ax.scatter([clap_a[i] for i in shared], [clap[i] for i in shared], s=10)
        ax.set(title=f"CLAP vs CLAP-A (N={len(shared)})", xlabel="CLAP-A (audio to reference)", ylabel="CLAP (text)")
        fig.tight_layout()
        fig.savefig(out / "clap_vs_clap_a.png")
        plt.close(fig)
