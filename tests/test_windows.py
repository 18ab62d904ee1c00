"""The one windowing and crossfade of long inputs (editor, separator), streamed."""

import pytest
import torch

from shards.windows import overlap_add, spans


def _blocks(x, size, log=None):
    for a in range(0, x.shape[-1], size):
        if log is not None:
            log.append(a + size)
        yield x[..., a:a + size]


def test_spans_cover_the_signal_and_the_last_ends_at_it():
    assert spans(5, 10, 8) == [(0, 5)]
    assert spans(30, 10, 8) == [(0, 10), (8, 18), (16, 26), (20, 30)]
    with pytest.raises(ValueError):
        spans(10, 4, 0)


@pytest.mark.parametrize("n,window,fade", [(1000, 128, 16), (129, 128, 16), (128, 128, 16), (100, 128, 16),
                                           (1000, 100, 0), (1001, 100, 50)])
@pytest.mark.parametrize("block,batch", [(1, 1), (37, 3), (5000, 8)])
def test_windows_of_the_identity_give_the_signal_back_whatever_the_blocks(n, window, fade, block, batch):
    """Windows are the spans' (in order, each the signal's steps there), and windows returned unchanged give the
    signal back exactly (the weights sum to one over every overlap), whatever the blocks and the batch."""
    x = torch.randn(2, n)
    seen = []

    def identity(pieces, indices):
        assert pieces.shape[0] <= batch
        seen.extend(indices)
        for k, piece in zip(indices, pieces):
            a, b = spans(n, window, window - fade)[k]
            assert torch.equal(piece, x[:, a:b]), (k, a, b)
        return pieces

    out = torch.cat(list(overlap_add(_blocks(x, block), window, fade, batch, identity)), dim=-1)
    assert seen == list(range(len(spans(n, window, window - fade))))
    torch.testing.assert_close(out, x, rtol=0, atol=1e-6)


@pytest.mark.parametrize("block", [1, 50, 2000])
def test_windows_changed_by_constants_blend_linearly_over_their_overlaps(block):
    """Window k returned as the constant k: the result is Σ ramp_k·k / Σ ramp_k with ramps rising linearly over
    the first `fade` steps of every window but the first and falling over the last `fade` of every window but
    the last (written out here from the spans), a smooth blend from 0 to the last index."""
    n, window, fade = 1000, 128, 32
    out = torch.cat(list(overlap_add(_blocks(torch.zeros(n), block), window, fade, 4,
                                     lambda p, ks: torch.stack([torch.full_like(q, float(k)) for q, k in zip(p, ks)]))))
    windows = spans(n, window, window - fade)
    total, weight = torch.zeros(n), torch.zeros(n)
    edge = torch.arange(1, fade + 1) / (fade + 1)
    for k, (a, b) in enumerate(windows):
        ramp = torch.ones(b - a)
        if k > 0:
            ramp[:fade] = edge
        if k < len(windows) - 1:
            ramp[-fade:] = torch.minimum(ramp[-fade:], edge.flip(0))
        total[a:b] += k * ramp
        weight[a:b] += ramp
    torch.testing.assert_close(out, total / weight)
    assert (out[1:] - out[:-1] >= -1e-6).all() and out[0] == 0 and out[-1] == len(windows) - 1


def test_output_streams_as_the_input_arrives():
    """The first output comes long before the input ends, and the input read ahead of the output stays within a
    batch of windows and a block: memory does not grow with the signal's length."""
    n, window, fade, block, batch = 100_000, 1000, 100, 300, 4
    read, ahead = [], []
    done = 0
    for piece in overlap_add(_blocks(torch.randn(n), block, read), window, fade, batch, lambda p, _: p):
        done += piece.shape[-1]
        ahead.append(read[-1] - done)
    assert done == n and len(ahead) > 20
    assert max(ahead[:-1]) <= (batch + 1) * window + block, max(ahead)


def test_refuses_a_fade_as_long_as_the_window_and_an_empty_batch():
    with pytest.raises(ValueError, match="fade"):
        list(overlap_add([torch.zeros(10)], 4, 4, 1, lambda p, _: p))
    with pytest.raises(ValueError, match="at least one"):
        list(overlap_add([torch.zeros(10)], 4, 1, 0, lambda p, _: p))
