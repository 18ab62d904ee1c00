"""The reference toolkits' audio preparation: torchaudio's sinc resampler against its analytic properties
(torchaudio itself cannot be installed here), and each protocol's channel, DC, padding and PCM steps."""

import math

import numpy as np
import pytest
import torch

from evaluation.protocols import PROTOCOLS, get_protocol, sinc_resample
from shards.audio import Audio

KAISER = PROTOCOLS["fadtk"].resampler


def _tone(freq, rate, seconds=1.0, dtype=torch.float64):
    return torch.sin(2 * math.pi * freq * torch.arange(int(rate * seconds), dtype=dtype) / rate)


def _amplitude(wave, freq, rate):
    """Amplitude of a tone of `freq` in the middle half of `wave` (least squares on sin and cos)."""
    n = len(wave)
    t = np.arange(n // 4, 3 * n // 4) / rate
    basis = np.stack([np.sin(2 * np.pi * freq * t), np.cos(2 * np.pi * freq * t)], axis=1)
    coef = np.linalg.lstsq(basis, np.asarray(wave[n // 4:3 * n // 4]), rcond=None)[0]
    return float(np.hypot(*coef))


@pytest.mark.parametrize("orig,new", [(44100, 16000), (48000, 16000), (22050, 16000), (8000, 16000), (32000, 16000)])
@pytest.mark.parametrize("kwargs", [{}, KAISER], ids=["hann6", "kaiser64"])
def test_sinc_resample_passes_the_band_and_stops_aliases(orig, new, kwargs):
    tone = sinc_resample(_tone(1000.0, orig), orig, new, **kwargs)
    assert len(tone) == math.ceil(orig * new / orig)  # ceil(t·new/orig) samples, t = one second
    # a 1 kHz tone comes out as the same tone at the new rate: amplitude 1, same phase (no delay)
    expected = _tone(1000.0, new).numpy()
    middle = slice(new // 4, 3 * new // 4)
    assert np.abs(tone.numpy()[middle] - expected[middle]).max() < 2e-3
    if orig > new:  # a tone above the new Nyquist frequency must not fold back into the band
        alias = orig / 2 * 0.9 if orig / 2 * 0.9 > new / 2 * 1.1 else new / 2 * 1.1
        folded = new - alias % new if alias % new > new / 2 else alias % new
        out = sinc_resample(_tone(alias, orig), orig, new, **kwargs).numpy()
        assert _amplitude(out, folded, new) < 0.01


def test_sinc_resample_identity_dtype_batch_and_dc():
    x = torch.randn(2, 3, 4410, dtype=torch.float32)
    assert sinc_resample(x, 16000, 16000) is x
    y = sinc_resample(x, 44100, 16000)
    assert y.shape == (2, 3, 1600) and y.dtype == torch.float32
    np.testing.assert_allclose(y[1, 2].numpy(), sinc_resample(x[1, 2], 44100, 16000).numpy(), atol=1e-6)
    # the kernel's DC gain is rolloff-limited only in the stopband: a constant stays constant inside the clip
    dc = sinc_resample(torch.ones(44100, dtype=torch.float64), 44100, 16000)
    assert np.abs(dc[2000:-2000].numpy() - 1).max() < 1e-3


def test_protocols_prepare_as_their_toolkits_do():
    rng = np.random.default_rng(0)
    stereo = np.stack([rng.standard_normal(8000) * 0.1 + 0.2, rng.standard_normal(8000) * 0.1 - 0.5]).astype(np.float32)
    clip = Audio(stereo, 16000)
    ldm = get_protocol("audioldm_eval").prepare(clip, 16000)
    first = stereo[0] - stereo[0].mean()  # the first channel, DC removed, padded to 2 s
    assert ldm.dtype == np.float32 and len(ldm) == 32000
    np.testing.assert_array_equal(ldm[:8000], first)
    assert not ldm[8000:].any()
    fad = get_protocol("fadtk").prepare(clip, 16000)
    mono = stereo.mean(axis=0)  # the channel mean, DC kept, 16-bit PCM, padded to 1 s
    assert len(fad) == 16000 and not fad[8000:].any()
    assert np.abs(fad[:8000] - mono).max() <= 1 / 32768 + 1e-7
    assert np.all(np.round(fad * 32768) == fad * 32768)  # int16 / 32768 exactly, as fadtk's load_wav
    assert "DC removed" in get_protocol("audioldm_eval").describe() and "float16" in get_protocol("fadtk").describe()
    with pytest.raises(ValueError, match="valid: \\['audioldm_eval', 'fadtk'\\]"):
        get_protocol("soxr")


def test_fadtk_resamples_with_a_kernel_computed_in_float64():
    """torchaudio.transforms.Resample (fadtk's) computes its kernel in float64 and casts it; the functional form
    (audioldm_eval's) computes it in the input's float32. The float64 kernel is the closer one to exact."""
    kw = {k: v for k, v in PROTOCOLS["fadtk"].resampler.items() if k != "kernel_dtype"}
    assert PROTOCOLS["fadtk"].resampler["kernel_dtype"] == "float64"
    assert "kernel_dtype" not in PROTOCOLS["audioldm_eval"].resampler
    x = torch.from_numpy(np.random.default_rng(0).standard_normal(44100).astype(np.float32))
    exact = sinc_resample(x.double(), 44100, 16000, **kw)
    k64 = sinc_resample(x, 44100, 16000, kernel_dtype="float64", **kw)
    k32 = sinc_resample(x, 44100, 16000, **kw)
    assert k64.dtype == torch.float32 and not torch.equal(k64, k32)
    assert (k64.double() - exact).abs().max() < (k32.double() - exact).abs().max()
