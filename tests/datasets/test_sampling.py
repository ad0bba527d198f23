import pytest
import torch

from vidssl.datasets.sampling import (
    BlockSampler,
    ClipSampler,
    ClipTooShortError,
    SequenceSampler,
    clip_time_span,
)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_clip_sampler_stride_and_bounds():
    s = ClipSampler(num_frames=8, stride=2)
    assert s.span == 15
    for seed in range(50):
        idx = s(20, gen(seed))
        assert len(idx) == 8 and idx == list(range(idx[0], idx[0] + 16, 2))
        assert 0 <= idx[0] and idx[-1] < 20


def test_clip_sampler_centre_is_deterministic():
    s = ClipSampler(num_frames=4, stride=3, random=False)
    assert s(20, gen(0)) == s(20, gen(1)) == [5, 8, 11, 14]  # span 10, slack 10, centred start 5


def test_clip_sampler_jitter_stays_in_order_and_inside():
    s = ClipSampler(num_frames=6, stride=2, temporal_jitter=1)
    for seed in range(100):
        idx = s(s.span, gen(seed))
        assert idx == sorted(idx) and idx[0] >= 0 and idx[-1] < s.span


def test_block_sampler_dpc_layout():
    s = BlockSampler(num_seq=8, seq_len=5, stride=3)
    assert s.num_frames == 40 and s.span == 118
    idx = s(200, gen(3))
    assert len(idx) == 40 and all(b - a == 3 for a, b in zip(idx, idx[1:]))
    with pytest.raises(ClipTooShortError, match="118"):
        s(117, gen(0))


def test_sequence_sampler_draws_strides_in_range_and_clips_to_video():
    s = SequenceSampler(num_frames=4, min_stride=1, max_stride=5)
    strides = set()
    for seed in range(200):
        idx = s(30, gen(seed))
        d = {b - a for a, b in zip(idx, idx[1:])}
        assert len(d) == 1
        strides |= d
        assert idx[-1] < 30
    assert strides == {1, 2, 3, 4, 5}
    # a short video limits the stride instead of failing
    assert s(7, gen(0))[-1] < 7
    with pytest.raises(ClipTooShortError):
        s(3, gen(0))


def test_same_generator_state_same_indices():
    s = BlockSampler(num_seq=4, seq_len=3, stride=2)
    assert s(100, gen(7)) == s(100, gen(7))


def test_clip_time_span():
    assert clip_time_span([10, 12, 14], fps=10.0) == pytest.approx((1.0, 0.5))
    with pytest.raises(ValueError):
        clip_time_span([], fps=10.0)
