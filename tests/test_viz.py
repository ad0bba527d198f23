import numpy as np
import torch
from PIL import Image

from vidssl import viz


def test_montage_layout():
    ims = [np.full((4, 5, 3), i * 40, np.uint8) for i in range(5)]
    sheet = viz.montage(ims, ncols=3, pad=1)
    assert sheet.shape == (2 * 5 + 1, 3 * 6 + 1, 3)
    assert (sheet[1:5, 1:6] == 0).all() and (sheet[6:10, 7:12] == 160).all()


def test_overlay_leaves_background_and_colours_objects():
    from vidssl.datasets.formats import DAVIS_PALETTE

    frames = np.zeros((2, 4, 4, 3), np.uint8)
    masks = np.zeros((2, 4, 4), np.uint8)
    masks[1, :2, :2] = 1
    out = viz.overlay_masks(frames, masks, alpha=1.0)
    assert (out[0] == 0).all()
    assert (out[1, 0, 0] == np.asarray(DAVIS_PALETTE[1])).all() and (out[1, 3, 3] == 0).all()


def test_save_png_round_trips(tmp_path):
    sheet = viz.montage([np.full((8, 8, 3), 7 * i, np.uint8) for i in range(3)], ncols=2)
    path = viz.save_png(tmp_path / "a.png", sheet)
    np.testing.assert_array_equal(np.asarray(Image.open(path)), sheet)


def test_gif_and_mp4_writers(tmp_path):
    import av

    frames = [np.full((15, 21, 3), 20 * i, np.uint8) for i in range(5)]
    gif = viz.save_gif(tmp_path / "a.gif", frames)
    assert Image.open(gif).n_frames == 5
    mp4 = viz.save_mp4(tmp_path / "a.mp4", frames, fps=5)
    with av.open(str(mp4)) as c:
        decoded = list(c.decode(video=0))
    assert len(decoded) == 5 and (decoded[0].height, decoded[0].width) == (16, 22)


def test_cluster_grid_rows():
    rows = [[np.zeros((6, 6, 3), np.uint8)] * 3, [np.zeros((6, 6, 3), np.uint8)] * 2]
    grid = viz.cluster_grid(rows, titles=["c0", "c1"])
    assert grid.shape == (2 * 8 + 2, 4 * 8 + 2, 3)
