import numpy as np
import pytest
import soundfile as sf

from shards import audio


def _tone(sr=16000, seconds=1.0, channels=2):
    t = np.arange(int(sr * seconds)) / sr
    return np.stack([0.5 * np.sin(2 * np.pi * 440 * t * (c + 1)) for c in range(channels)]).astype(np.float32)


@pytest.mark.parametrize("suffix", [".wav", ".flac", ".ogg"])
def test_soundfile_formats(tmp_path, suffix):
    path = tmp_path / f"a{suffix}"
    sf.write(path, _tone().T, 16000)
    a = audio.decode(path)
    assert a.sample_rate == 16000 and a.channels == 2 and abs(a.duration - 1.0) < 0.01


@pytest.mark.parametrize("suffix,codec", [(".m4a", "aac"), (".opus", "libopus"), (".webm", "libopus")])
def test_pyav_containers(tmp_path, suffix, codec):
    av = pytest.importorskip("av")
    path = tmp_path / f"a{suffix}"
    sr = 48000
    samples = _tone(sr, 1.0, 1)
    with av.open(str(path), "w") as out:
        stream = out.add_stream(codec, rate=sr, layout="mono")
        frame = av.AudioFrame.from_ndarray(samples, format="fltp", layout="mono")
        frame.sample_rate = sr
        for packet in stream.encode(frame):
            out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    a = audio.load(path, sample_rate=16000, mono=True)
    assert a.sample_rate == 16000 and a.channels == 1 and 0.9 < a.duration < 1.2
    assert np.abs(a.samples).max() > 0.1


def test_mono_resample_pad_crop(tmp_path):
    a = audio.Audio(_tone(44100, 2.0), 44100)
    b = audio.resample(audio.to_mono(a), 16000)
    assert b.samples.shape == (1, 32000)
    np.testing.assert_allclose(audio.to_mono(a).samples[0], a.samples.mean(0))
    assert audio.fit_length(b.samples, 16000).shape == (1, 16000)
    padded = audio.fit_length(b.samples, 40000)
    assert padded.shape == (1, 40000) and np.all(padded[:, 32000:] == 0)
    rep = audio.fit_length(b.samples, 40000, mode="repeat")
    np.testing.assert_array_equal(rep[:, 32000:], b.samples[:, :8000])
    flac = audio.encode_flac(b)
    back = audio.decode(flac)
    assert back.sample_rate == 16000 and np.abs(back.samples - b.samples).max() < 1e-3


def test_unreadable_and_empty_name_the_file(tmp_path):
    bad = tmp_path / "broken.flac"
    bad.write_bytes(b"not audio at all")
    with pytest.raises(audio.AudioError, match="broken.flac"):
        audio.decode(bad)
    empty = tmp_path / "empty.wav"
    sf.write(empty, np.zeros((0, 1), np.float32), 16000)
    with pytest.raises(audio.AudioError, match="empty.wav.*empty"):
        audio.decode(empty)
    with pytest.raises(audio.AudioError, match="no such file"):
        audio.decode(tmp_path / "absent.wav")


@pytest.mark.parametrize("suffix", [".flac", ".ogg", ".m4a"])
def test_a_reader_decodes_in_blocks_what_decode_decodes_whole(tmp_path, suffix):
    path = tmp_path / f"a{suffix}"
    if suffix == ".m4a":
        av = pytest.importorskip("av")
        with av.open(str(path), "w") as out:
            stream = out.add_stream("aac", rate=44100, layout="stereo")
            frame = av.AudioFrame.from_ndarray(_tone(44100, 3.0), format="fltp", layout="stereo")
            frame.sample_rate = 44100
            for packet in [*stream.encode(frame), *stream.encode(None)]:
                out.mux(packet)
    else:
        sf.write(path, _tone(44100, 3.0).T, 44100)
    with audio.Reader(path, seconds=0.5) as reader:
        blocks = list(reader)
        assert (reader.sample_rate, reader.channels) == (44100, 2)
    assert len(blocks) >= 5 and all(b.shape[0] == 2 and b.shape[1] <= 1.1 * 22050 for b in blocks[:-1])
    np.testing.assert_array_equal(np.concatenate(blocks, axis=1), audio.decode(path).samples)


@pytest.mark.parametrize("rate,channels,model_rate,model_channels", [(44100, 2, 16000, 1), (22050, 1, 44100, 2),
                                                                     (16000, 2, 16000, 2)])
def test_through_a_model_in_blocks_equals_conform_then_restore(rate, channels, model_rate, model_channels):
    """A model streamed at its own rate and channels gets what `conform` gives and its output comes back as
    `restore` makes it, pairing each stretch of output with the input it came from, whatever the blocks."""
    x = (0.3 * np.random.default_rng(0).standard_normal((channels, rate * 3 + 7))).astype(np.float32)
    clip = audio.Audio(x, rate)

    def model(blocks):  # any stateful, streaming processing; here a one-step delay line
        previous = np.zeros((model_channels, 1), np.float32)
        for block in blocks:
            joined = np.concatenate([previous, block], axis=1)
            previous = joined[:, -1:]
            yield 2 * joined[:, :-1]

    expected = np.concatenate([np.zeros((model_channels, 1), np.float32),
                               2 * audio.conform(clip, model_rate, model_channels)[:, :-1]], axis=1)
    expected = audio.restore(expected, model_rate, clip).samples
    for size in (1000, 50_000, x.shape[1]):
        pairs = list(audio.through((x[:, a:a + size] for a in range(0, x.shape[1], size)), rate, channels,
                                   model_rate, model_channels, model))
        ins, outs = (np.concatenate(p, axis=1) for p in zip(*pairs))
        assert all(i.shape == o.shape for i, o in pairs)
        np.testing.assert_array_equal(ins, x)
        np.testing.assert_allclose(outs, expected, atol=1e-5)


def test_a_writer_puts_a_file_in_place_only_when_finished(tmp_path):
    """Blocks go to a temporary file: an unfinished writer (an error mid-job) leaves nothing; integer formats
    get one gain for all the writers finished together (outputs that add up still add up)."""
    x = np.array([[0.5, -1.5, 2.0, 0.25]], dtype=np.float32)
    with pytest.raises(RuntimeError), audio.Writer(tmp_path / "out" / "a.flac", 16000, 1) as writer:
        writer.write(x)
        raise RuntimeError("the model failed")
    assert list((tmp_path / "out").iterdir()) == []
    with audio.Writer(tmp_path / "t.flac", 16000, 1) as a, audio.Writer(tmp_path / "r.wav", 16000, 1) as b:
        a.write(x)
        a.write(0.5 * x)
        b.write(4 * x)
        assert not (tmp_path / "t.flac").exists()
        gain = audio.finish([a, b], "mixture")
    assert gain == pytest.approx(0.999 / 2.0)  # the integer file's own peak; the float file keeps every value
    np.testing.assert_allclose(sf.read(tmp_path / "t.flac")[0], np.concatenate([x, 0.5 * x], 1)[0] * gain, atol=1e-4)
    np.testing.assert_array_equal(sf.read(tmp_path / "r.wav", dtype="float32")[0], 4 * x[0])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "r.wav", "t.flac"]


@pytest.mark.parametrize("orig,new", [(44100, 16000), (32000, 16000), (16000, 44100), (22050, 16000)])
def test_batched_resampling_on_the_device_matches_soxr_below_the_cutoff(orig, new):
    """shards/sinc.py's GPU method (torchaudio's windowed sinc) against soxr on tones up to 0.35 of the lower
    rate: the same length and the same samples to the two filters' passband ripple; every clip of a batch alike.
    On the CPU the batch goes through soxr in one call, each clip as soxr alone would make it."""
    import soxr
    import torch

    from shards import sinc

    t = np.arange(2 * orig) / orig
    x = sum(np.sin(2 * np.pi * f * t + f) for f in (100, 440, 1234, 3000, 0.35 * min(orig, new))) / 5
    x = (x * np.hanning(len(x))).astype(np.float32)
    ref = soxr.resample(x, orig, new, quality="HQ")
    batch = torch.from_numpy(np.stack([x, -x, 0.5 * x]))
    y = sinc.sinc_resample(batch, orig, new).numpy()
    assert y.shape == (3, len(ref))
    np.testing.assert_allclose(y[0], ref, atol=3e-3)
    np.testing.assert_allclose(y[1:], np.stack([-y[0], 0.5 * y[0]]), atol=1e-6)
    np.testing.assert_allclose(sinc.resample(batch, orig, new).numpy(), np.stack([ref, -ref, 0.5 * ref]), atol=1e-6)
