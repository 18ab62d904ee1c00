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
