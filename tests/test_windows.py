"""The one windowing and crossfade of long inputs (editor, separator)."""

import pytest
import torch

from shards.windows import OverlapAdd, batches, spans


def test_spans_cover_the_signal_and_the_last_ends_at_it():
    assert spans(5, 10, 8) == [(0, 5)]
    assert spans(30, 10, 8) == [(0, 10), (8, 18), (16, 26), (20, 30)]
    assert list(batches(list(range(5)), 2)) == [[0, 1], [2, 3], [4]]
    with pytest.raises(ValueError):
        spans(10, 4, 0)


@pytest.mark.parametrize("n,window,fade", [(1000, 128, 16), (129, 128, 16), (100, 128, 16), (1000, 100, 0)])
def test_overlap_add_weights_sum_to_one_and_are_streaming_invariant(n, window, fade):
    """Windows of the identity give back the signal exactly (weights sum to one over every overlap), per
    channel, whatever order or batch the windows arrive in."""
    x = torch.randn(2, n)
    windows = spans(n, window, window - fade)
    out = OverlapAdd((2,), n, fade, windows)
    for a, b in reversed(windows):
        for c in range(2):
            out.add(x[c, a:b], a, b, at=(c,))
    torch.testing.assert_close(out.result(), x)
    # a window changed by a constant shows as a smooth blend, bounded by the two sides
    if len(windows) > 1 and fade:
        blend = OverlapAdd((), n, fade, windows)
        for k, (a, b) in enumerate(windows):
            blend.add(torch.full((b - a,), float(k)), a, b)
        y = blend.result()
        assert (y[1:] - y[:-1] >= -1e-6).all() and y[0] == 0 and y[-1] == len(windows) - 1
