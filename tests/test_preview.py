import torch

from vidssl.datasets.transforms import to_blocks
from vidssl.app.preview_sheets import as_clip


def test_as_clip_lays_blocks_end_to_end_again():
    frames = torch.randn(20, 3, 8, 8)  # T×C×H×W, as a transform holds them
    blocks = to_blocks(frames, 5)  # 5×3×4×8×8
    clip = frames.permute(1, 0, 2, 3)
    assert torch.equal(as_clip(blocks), clip)
    assert as_clip(clip) is clip
