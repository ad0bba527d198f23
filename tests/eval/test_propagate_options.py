"""The other protocols' steps as options: disk windows, VFS's min-max upsampling, DINO's nearest first labels."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from vidssl.eval.propagate import _reference_step, first_frame_labels, label_map, propagate_step, window_mask


def test_disk_window_includes_the_rim():
    dy, dx = torch.tensor([3, 2, 0]), torch.tensor([4, 2, 5])
    assert window_mask(dy, dx, 5, "disk").tolist() == [True, True, True]
    assert window_mask(dy, dx, 5, "circle").tolist() == [False, True, False]
    g = torch.Generator().manual_seed(1)
    query = F.normalize(torch.randn(7, 9, 4, generator=g), dim=-1)
    keys = F.normalize(torch.randn(2, 7, 9, 4, generator=g), dim=-1)
    values = torch.softmax(torch.randn(2, 7, 9, 3, generator=g), dim=-1)
    args = dict(topk=4, radius=3, temperature=0.2, window="disk", ties=True)
    torch.testing.assert_close(propagate_step(query, keys, values, tile=4, **args),
                               _reference_step(query, keys, values, **args))


def test_bilinear_minmax_is_vfs_postprocessing():
    g = torch.Generator().manual_seed(2)
    pred = torch.rand(5, 6, 3, generator=g)
    pred[..., 2] = 0  # a label with max 0 stays as it is
    full = F.interpolate(pred.permute(2, 0, 1)[None], size=(20, 24), mode="bilinear", align_corners=False)[0]
    expected = []
    for channel in full:  # vanilla_tracker.py: (x - min) / (max - min + 1e-12) where max > 0
        lo, hi = channel.min(), channel.max()
        expected.append((channel - lo) / (hi - lo + 1e-12) if hi > 0 else channel)
    assert torch.equal(label_map(pred, (20, 24), upsample="bilinear_minmax"),
                       torch.stack(expected).argmax(0).to(torch.uint8))
    with pytest.raises(ValueError, match="upsample="):
        label_map(pred, (20, 24), upsample="cubic")


def test_pil_nearest_first_labels_equal_torch_nearest_exact():
    """DINO's read_seg (PIL nearest) and the DINOv3 notebook (torch nearest-exact) pick the same cells."""
    rng = np.random.default_rng(0)
    for (H, W), (h, w) in (((36, 60), (24, 40)), ((480, 854), (60, 104)), ((37, 61), (13, 7))):
        mask = rng.integers(0, 4, (H, W)).astype(np.uint8)
        ours = first_frame_labels(mask, (h, w), downsample="pil_nearest").argmax(-1)
        torch_exact = F.interpolate(torch.from_numpy(mask)[None, None].float(), (h, w), mode="nearest-exact")[0, 0]
        pil = np.array(Image.fromarray(mask).resize((w, h), Image.NEAREST))
        assert torch.equal(ours, torch_exact.long()) and np.array_equal(ours.numpy(), pil)
