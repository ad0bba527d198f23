"""Label propagation: carry a first-frame segmentation through a video by feature affinity.

The defaults are the computation of CRW's official DAVIS evaluation (ajabri/videowalk, ``test.py``
with ``data/vos.py``, run with ``--topk 10 --videoLen 20 --radius 12 --temperature 0.05``):

1. the first frame's label map becomes one-hot soft labels at feature resolution, downsampled
   bilinearly (pixel-centre aligned, no antialiasing: OpenCV's ``INTER_LINEAR``);
2. each later frame's labels are predicted from a context of the first frame (seen whole, the
   "long memory") plus ``n_context`` frames seen only near each query cell (cells at Euclidean
   distance < ``radius``): for every query cell, the affinities (dot products of L2-normalised
   features) to the context cells, the ``topk`` largest of them, a softmax over those at
   ``temperature``, and the weighted sum of their soft labels;
3. the ``n_context`` frames are the last ones predicted; before there are that many, the context is
   filled with copies of the first frame and its labels (the official loader pads each video with
   ``videoLen`` copies of frame 0), so early frames draw most of their top-k from the first frame;
4. the predicted soft labels (kept as the context's labels, not re-binarised) are upsampled
   bilinearly to the frame size and the argmax is the frame's label map.

Named options, off by default, give the other common forms: ``window="square"`` (``|dy|, |dx| ≤
radius``), ``pad_first=False`` (each frame once: early frames see only what was predicted so far),
``downsample="area"`` (first-frame labels as area fractions), ``restrict_first=True`` (the first frame
windowed too). Their effect on J&F is measured in docs/methods/correspondence.md. The other
protocols' steps are options too (presets in vidssl/configs/protocol/): ``window="disk"`` (distance ≤
radius), ``downsample="pil_nearest"``, ``ties=True`` (every candidate equal to the k-th score kept),
``upsample="patch" | "nearest" | "bilinear_minmax"`` (DINO, the DINOv3 notebook, VFS).

Memory does not grow with the video: each frame's features are computed when the frame is reached,
and only the first frame plus a rolling window of ``n_context`` frames is kept. Affinities are only
computed inside each query's radius window, one square tile of queries at a time (``tile``), instead
of a dense query×context matrix masked afterwards; ``_reference_step`` is that dense form, kept for
tests and the benchmark, and gives the same labels.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor
from tqdm import tqdm

from vidssl.datasets.formats import DavisSequence, davis, read_mask, write_mask

FeatureFn = Callable[[Tensor], Tensor]  # uint8 frame H×W×3 → features D×h×w (L2-normalised over D)

MAX_OBJECTS = 100  # DAVIS-2017 sequences have at most ~10 objects; far more means a mis-read mask
WINDOWS = ("circle", "square", "disk")
DOWNSAMPLING = ("bilinear", "area", "pil_nearest")
UPSAMPLING = ("bilinear", "patch", "nearest", "bilinear_minmax")


def _check_window(window: str) -> None:
    if window not in WINDOWS:
        raise ValueError(f"window={window!r}: expected one of {', '.join(WINDOWS)}")


def window_reach(radius: float, window: str = "circle") -> int:
    """The largest |dy| (or |dx|) in cells that a window of ``radius`` contains."""
    _check_window(window)
    # circle: distance < radius (strict, as the official mask); square: |dy|, |dx| ≤ radius;
    # disk: distance ≤ radius
    return max(math.ceil(radius) - 1, -1) if window == "circle" else math.floor(radius)


def window_mask(dy: Tensor, dx: Tensor, radius: float, window: str = "circle") -> Tensor:
    """Which offsets lie inside the window; ``dy`` and ``dx`` broadcast against each other (cells)."""
    _check_window(window)
    if window == "circle":
        return dy * dy + dx * dx < radius * radius
    if window == "disk":
        return dy * dy + dx * dx <= radius * radius
    return (dy.abs() <= radius) & (dx.abs() <= radius)


# --------------------------------------------------------------------------------------------------
# One propagation step: predict a frame's soft labels from its features and the context's


def _check_step_inputs(query: Tensor, keys: Tensor, values: Tensor, global_keys: Tensor | None,
                       global_values: Tensor | None) -> None:
    if query.ndim != 3 or keys.ndim != 4 or values.ndim != 4:
        raise ValueError(f"expected query h×w×D, keys N×h×w×D, values N×h×w×K; got {tuple(query.shape)}, "
                         f"{tuple(keys.shape)}, {tuple(values.shape)}")
    if keys.shape[1:] != query.shape or values.shape[:3] != keys.shape[:3]:
        raise ValueError(f"context shapes {tuple(keys.shape)} / {tuple(values.shape)} do not fit query "
                         f"{tuple(query.shape)}")
    if (global_keys is None) != (global_values is None):
        raise ValueError("global_keys and global_values go together")
    if global_keys is not None and (global_keys.shape[-1] != query.shape[-1]
                                    or global_values.shape[:-1] != global_keys.shape[:-1]
                                    or global_values.shape[-1] != values.shape[-1]):
        raise ValueError(f"global context {tuple(global_keys.shape)} / {tuple(global_values.shape)} does not "
                         f"fit query {tuple(query.shape)} and values {tuple(values.shape)}")


def _softmax_sum(top: Tensor, labels: Tensor, temperature: float) -> Tensor:
    """Softmax over each query's top-k scores, then the weighted sum of their labels.

    Inputs: top Q×k scores (sorted, −inf allowed where fewer candidates exist), labels Q×k×K.
    Output: Q×K soft labels.
    """
    weights = torch.softmax(top / temperature, dim=1)  # a −inf candidate gets weight 0
    return torch.einsum("qk,qkc->qc", weights, labels)


def _topk(scores: Tensor, topk: int, ties: bool) -> tuple[Tensor, Tensor]:
    """The ``topk`` largest scores of each row and their columns; with ``ties``, every score equal to the
    k-th largest too (DINO's and DINOv3's rule: they keep all candidates ≥ the k-th value), the rows
    padded with −inf where they have fewer.

    Inputs: scores Q×C. Outputs: Q×k' scores (sorted, k' ≥ k with ties) and Q×k' column indices.
    """
    k = min(topk, scores.shape[1])
    if not ties:
        return scores.topk(k, dim=1)
    extra = 4
    while True:
        wanted = min(k + extra, scores.shape[1])
        top, pick = scores.topk(wanted, dim=1)
        kth = top[:, k - 1: k]
        # more candidates may equal the k-th than were taken: take more
        if wanted == scores.shape[1] or not ((top[:, -1:] == kth) & (kth > float("-inf"))).any():
            break
        extra *= 2
    return top.masked_fill(top < kth, float("-inf")), pick


def _merge_topk(top_a: Tensor, labels_a: Tensor, top_b: Tensor, labels_b: Tensor, topk: int,
                ties: bool = False) -> tuple[Tensor, Tensor]:
    """The top-k of two candidate sets from the top-k of each (the union's top-k is among them).

    Inputs: top_* Q×k_* scores, labels_* Q×k_*×K. Outputs: Q×k scores (sorted) and Q×k×K labels
    (with ``ties``, every candidate equal to the union's k-th score is kept, the rest set to −inf).
    """
    top = torch.cat([top_a, top_b], dim=1)
    labels = torch.cat([labels_a, labels_b], dim=1)
    if ties:
        kth = top.topk(min(topk, top.shape[1]), dim=1).values[:, -1:]
        return top.masked_fill(top < kth, float("-inf")), labels
    top, pick = top.topk(min(topk, top.shape[1]), dim=1)
    return top, labels.gather(1, pick[..., None].expand(-1, -1, labels.shape[-1]))


def propagate_step(
    query: Tensor,
    keys: Tensor,
    values: Tensor,
    *,
    global_keys: Tensor | None = None,
    global_values: Tensor | None = None,
    topk: int = 10,
    radius: float = 12,
    temperature: float = 0.05,
    window: str = "circle",
    tile: int = 8,
    ties: bool = False,
) -> Tensor:
    """Predict one frame's soft labels, computing affinities only inside each query's radius window.

    Inputs:
      query: h×w×D features of the frame to label (channels last, L2-normalised).
      keys, values: N×h×w×D features and N×h×w×K soft labels of the radius-restricted context frames.
      global_keys, global_values: M×h'×w'×D / M×h'×w'×K context seen without radius restriction
        (the first frame when ``restrict_first=False``), or None.
      window: "circle" (context cells at distance < radius from the query's position, the
        official mask), "square" (|dy|, |dx| ≤ radius) or "disk" (distance ≤ radius).
      ties: keep every candidate whose score equals the k-th largest (DINO, DINOv3), not exactly k.
      tile: queries are processed in tile×tile blocks: the block's context region, (tile+2r)² cells
        per frame, is multiplied with it as one matrix, and the products outside each query's own
        window are masked before the top-k. Larger tiles waste more products, smaller ones
        make smaller, slower matrix products; the result does not depend on it.
    Output: h×w×K soft labels (each cell's labels sum to one when the context's do).
    """
    _check_step_inputs(query, keys, values, global_keys, global_values)
    _check_window(window)
    if tile < 1 or radius < 0 or topk < 1 or temperature <= 0:
        raise ValueError(f"need tile ≥ 1, radius ≥ 0, topk ≥ 1, temperature > 0; got {tile}, {radius}, {topk}, "
                         f"{temperature}")
    h, w, dim = query.shape
    n, num_labels = keys.shape[0], values.shape[-1]
    device = query.device
    flat_values = values.reshape(n * h * w, num_labels)  # a view: the context buffer is contiguous
    if global_keys is not None:
        g_keys = global_keys.reshape(-1, dim)  # (G, D)
        g_values = global_values.reshape(-1, num_labels)  # (G, K)
    out = query.new_empty(h, w, num_labels)
    # one buffer for the context rows of a row of tiles (reused, so rows never coexist in memory)
    reach = max(window_reach(radius, window), 0)  # the window's half-extent in cells
    band_buffer = keys.new_empty(w * n * min(tile + 2 * reach, h) * dim)

    for y0 in range(0, h, tile):
        y1 = min(y0 + tile, h)
        # the rows that this row of tiles can reach, laid out column-major, (w, N, rh, D): the
        # region of any tile in the row is then one contiguous slice, a matrix without a copy
        ry0, ry1 = max(y0 - reach, 0), min(y1 + reach, h)
        rh = ry1 - ry0
        band = band_buffer[: w * n * rh * dim].view(w, n, rh, dim)
        band.copy_(keys[:, ry0:ry1].permute(2, 0, 1, 3))
        for x0 in range(0, w, tile):
            x1 = min(x0 + tile, w)
            rx0, rx1 = max(x0 - reach, 0), min(x1 + reach, w)
            rw = rx1 - rx0
            q = query[y0:y1, x0:x1].reshape(-1, dim)  # (Q, D)
            num_q = q.shape[0]
            scores = (q @ band[rx0:rx1].view(-1, dim).T).view(num_q, rw, n, rh)  # region cell (x, frame, y)

            # keep each query's own window
            qy, qx = torch.meshgrid(torch.arange(y0, y1, device=device), torch.arange(x0, x1, device=device),
                                    indexing="ij")
            dy = torch.arange(ry0, ry1, device=device) - qy.reshape(-1, 1)  # (Q, rh)
            dx = torch.arange(rx0, rx1, device=device) - qx.reshape(-1, 1)  # (Q, rw)
            near = window_mask(dy[:, None, None, :], dx[:, :, None, None], radius, window)  # (Q, rw, 1, rh)
            scores = scores.masked_fill_(~near, float("-inf")).view(num_q, -1)

            top, pick = _topk(scores, topk, ties)  # (Q, k); pick = (x * N + frame) * rh + y
            cell_y, rest = pick % rh + ry0, pick // rh
            frame, cell_x = rest % n, rest // n + rx0
            labels = flat_values[(frame * h + cell_y) * w + cell_x]  # (Q, k, K)
            if global_keys is not None:
                g_top, g_pick = _topk(q @ g_keys.T, topk, ties)  # (Q, k) over all G cells
                top, labels = _merge_topk(g_top, g_values[g_pick], top, labels, topk, ties)
            out[y0:y1, x0:x1] = _softmax_sum(top, labels, temperature).view(y1 - y0, x1 - x0, num_labels)
    return out


def _reference_step(
    query: Tensor,
    keys: Tensor,
    values: Tensor,
    *,
    global_keys: Tensor | None = None,
    global_values: Tensor | None = None,
    topk: int = 10,
    radius: float = 12,
    temperature: float = 0.05,
    window: str = "circle",
    chunk: int = 1024,
    ties: bool = False,
) -> Tensor:
    """The common dense form of `propagate_step`: full query×context affinities, then a radius mask.

    Same inputs and output as `propagate_step` (``chunk`` = queries per block); slow, for tests and
    the benchmark only.
    """
    _check_step_inputs(query, keys, values, global_keys, global_values)
    h, w, dim = query.shape
    n, num_labels = keys.shape[0], values.shape[-1]
    q_all = query.reshape(h * w, dim)
    k_all = keys.reshape(n * h * w, dim)
    table = values.reshape(n * h * w, num_labels)
    cell_y = torch.arange(h, device=query.device).repeat_interleave(w)  # (h*w,) row of each cell
    cell_x = torch.arange(w, device=query.device).repeat(h)
    if global_keys is not None:
        table = torch.cat([global_values.reshape(-1, num_labels), table], dim=0)
    out = []
    for start in range(0, h * w, chunk):
        stop = min(start + chunk, h * w)
        qi = slice(start, stop)
        scores = (q_all[qi] @ k_all.T).view(stop - start, n, h * w)  # (Qc, N, h*w)
        near = window_mask(cell_y[qi, None] - cell_y[None], cell_x[qi, None] - cell_x[None], radius, window)
        scores = scores.masked_fill(~near[:, None, :], float("-inf")).flatten(1)
        if global_keys is not None:
            scores = torch.cat([q_all[qi] @ global_keys.reshape(-1, dim).T, scores], dim=1)
        if ties:  # every candidate ≥ the k-th score, over the whole row
            kth = scores.topk(min(topk, scores.shape[1]), dim=1).values[:, -1:]
            weights = torch.softmax(scores.masked_fill(scores < kth, float("-inf")) / temperature, dim=1)
            out.append(weights @ table)
            continue
        top, pick = scores.topk(min(topk, scores.shape[1]), dim=1)
        out.append(_softmax_sum(top, table[pick], temperature))
    return torch.cat(out).view(h, w, num_labels)


# --------------------------------------------------------------------------------------------------
# Whole videos


def check_first_mask(mask: Tensor | np.ndarray, *, name: str = "", max_objects: int = MAX_OBJECTS) -> Tensor:
    """Validate a first-frame label map (H×W integers: 0 background, 1..N objects); returns it as int64."""
    mask = torch.as_tensor(np.asarray(mask)).long()
    where = f"sequence {name!r}: " if name else ""
    if mask.ndim != 2 or mask.numel() == 0:
        raise ValueError(f"{where}first-frame mask must be a non-empty H×W map, got shape {tuple(mask.shape)}")
    if mask.min() < 0 or mask.max() > max_objects:
        raise ValueError(f"{where}first-frame mask has labels {sorted(mask.unique().tolist())}: expected "
                         f"0 (background) and object ids 1..{max_objects} (255 is DAVIS's void colour, "
                         f"not an object)")
    return mask


def first_frame_labels(mask: Tensor | np.ndarray, size: tuple[int, int], *, downsample: str = "bilinear",
                       name: str = "", max_objects: int = MAX_OBJECTS) -> Tensor:
    """One-hot soft labels of a first-frame label map at feature resolution.

    Inputs: mask H×W integers (0 background, 1..N objects); size (h, w) of the feature grid;
      downsample: "bilinear" (the one-hot map sampled at each cell's centre by bilinear
      interpolation without antialiasing, as OpenCV's INTER_LINEAR in the official loader),
      "area" (the fraction of each cell covered by each label) or "pil_nearest" (the label map resized
      to the grid by Pillow's nearest neighbour, then one-hot: DINO's ``read_seg``).
    Output: h×w×(N+1) float.
    """
    mask = check_first_mask(mask, name=name, max_objects=max_objects)
    if downsample not in DOWNSAMPLING:
        raise ValueError(f"downsample={downsample!r}: expected one of {', '.join(DOWNSAMPLING)}")
    num_labels = int(mask.max()) + 1
    if downsample == "pil_nearest":
        small = Image.fromarray(mask.to(torch.uint8).numpy()).resize((size[1], size[0]), Image.NEAREST)
        return F.one_hot(torch.from_numpy(np.array(small)).long(), num_labels).float()
    onehot = F.one_hot(mask, num_labels).permute(2, 0, 1).float()  # (K, H, W)
    if downsample == "area":
        small = F.interpolate(onehot[None], size=size, mode="area")[0]  # (K, h, w)
    else:
        small = F.interpolate(onehot[None], size=size, mode="bilinear", align_corners=False)[0]
    return small.permute(1, 2, 0).contiguous()


def propagate_labels(
    feats: Callable[[int], Tensor] | Tensor | Sequence[Tensor],
    first_mask: Tensor | np.ndarray,
    num_frames: int | None = None,
    *,
    n_context: int = 20,
    topk: int = 10,
    radius: float = 12,
    temperature: float = 0.05,
    restrict_first: bool = False,
    window: str = "circle",
    pad_first: bool = True,
    downsample: str = "bilinear",
    tile: int = 8,
    name: str = "",
    max_objects: int = MAX_OBJECTS,
    first_labels: Tensor | None = None,
    ties: bool = False,
    upsample: str = "bilinear",
    patch: int | None = None,
) -> Iterator[Tensor]:
    """Propagate a first-frame label map through a video; yields one label map per frame, in order.

    Inputs:
      feats: frame index → D×h×w features (L2-normalised over D), called once per frame when that
        frame is reached; or precomputed features T×D×h×w (a tensor or a sequence of D×h×w).
      first_mask: H×W integer labels of frame 0 (0 background, 1..N objects).
      num_frames: T (required with a callable; defaults to len(feats) otherwise).
      n_context, topk, radius, temperature, restrict_first, window, pad_first, downsample, tile:
        the protocol (see the module doc; tile changes speed only).
      ties: keep every context cell tied with the k-th score (see `propagate_step`).
      upsample: soft labels to label maps: "bilinear" (to the frame size, then argmax: videowalk),
        "patch" (DINO: bilinear by the factor ``patch``, each label's map min-max normalised, argmax,
        then nearest-neighbour resizing to the frame) or "nearest" (the DINOv3 notebook: nearest
        to the frame size, min-max normalised, argmax) or "bilinear_minmax" (VFS: bilinear to the
        frame size, min-max normalised where a label's max is > 0, argmax).
      patch: the backbone's patch size, for upsample="patch".
      name: sequence name used in error messages.
      first_labels: frame 0's soft labels at feature resolution, h×w×K, in place of the one-hot of
        ``first_mask`` (which may then be None): e.g. keypoint heat maps. The generator then yields
        each frame's soft labels h×w×K at feature resolution (frame 0: ``first_labels``).
    Outputs: T label maps H×W uint8; the first is `first_mask` itself.
    """
    if n_context < 0:
        raise ValueError(f"n_context must be ≥ 0, got {n_context}")
    _check_window(window)
    if downsample not in DOWNSAMPLING:
        raise ValueError(f"downsample={downsample!r}: expected one of {', '.join(DOWNSAMPLING)}")
    if upsample not in UPSAMPLING:
        raise ValueError(f"upsample={upsample!r}: expected one of {', '.join(UPSAMPLING)}")
    if upsample == "patch" and (patch is None or patch < 1):
        raise ValueError(f"upsample=patch needs the backbone's patch size (patch=N), got {patch}")
    if not callable(feats):
        frames = feats
        num_frames = len(frames) if num_frames is None else num_frames
        feats = frames.__getitem__
    if num_frames is None:
        raise ValueError("num_frames is required when feats is a callable")
    # checked here, not inside the generator, so that a bad mask fails at the call
    if first_labels is not None:
        if first_labels.ndim != 3:
            raise ValueError(f"first_labels must be h×w×K soft labels, got shape {tuple(first_labels.shape)}")
    else:
        first_mask = check_first_mask(first_mask, name=name, max_objects=max_objects)
    return _propagate(feats, first_mask, num_frames, n_context=n_context, restrict_first=restrict_first,
                      pad_first=pad_first, downsample=downsample, name=name, max_objects=max_objects,
                      upsample=upsample, patch=patch, first_labels=first_labels,
                      step=dict(topk=topk, radius=radius, temperature=temperature, window=window, tile=tile,
                                ties=ties))


def _propagate(feats: Callable[[int], Tensor], first_mask: Tensor, num_frames: int, *, n_context: int,
               restrict_first: bool, pad_first: bool, downsample: str, name: str, max_objects: int,
               step: dict, upsample: str = "bilinear", patch: int | None = None,
               first_labels: Tensor | None = None) -> Iterator[Tensor]:
    soft = first_labels is not None
    where = f"sequence {name!r}: " if name else ""

    def features(t: int) -> Tensor:
        f = feats(t)
        if f.ndim != 3:
            raise ValueError(f"{where}features of frame {t} must be D×h×w, got shape {tuple(f.shape)}")
        return f.permute(1, 2, 0).contiguous()  # (h, w, D): a tile's context region is then rows of D

    first = features(0)
    h, w, dim = first.shape
    if soft:
        if first_labels.shape[:2] != (h, w):
            raise ValueError(f"{where}first_labels {tuple(first_labels.shape)} do not fit the feature grid {h}×{w}")
        first_values = first_labels.to(first)
        yield first_values
    else:
        height, width = first_mask.shape[-2:]
        first_values = first_frame_labels(first_mask, (h, w), downsample=downsample, name=name,
                                          max_objects=max_objects).to(first)
        yield first_mask.to(torch.uint8)
    if num_frames <= 1:
        return

    # rolling context: slot 0 holds the first frame, slots 1..n_context the latest predictions
    # (overwritten oldest first; the order of context frames does not change the result). With
    # pad_first they start as copies of the first frame, as the official loader pads the video.
    keys = first.new_empty(n_context + 1, h, w, dim)
    values = first.new_empty(n_context + 1, h, w, first_values.shape[-1])
    keys[0], values[0] = first, first_values
    filled = 0
    if pad_first:
        keys[1:], values[1:] = first, first_values
        filled = n_context
    for t in range(1, num_frames):
        query = features(t)
        if query.shape != first.shape:
            raise ValueError(f"{where}frame {t} has features {tuple(query.shape)} (h×w×D), frame 0 has "
                             f"{tuple(first.shape)}: frames of a sequence must have one size")
        if restrict_first:
            pred = propagate_step(query, keys[: filled + 1], values[: filled + 1], **step)
        else:
            pred = propagate_step(query, keys[1: filled + 1], values[1: filled + 1], global_keys=first[None],
                                  global_values=first_values[None], **step)
        if n_context > 0:
            slot = 1 + (t - 1) % n_context
            keys[slot], values[slot] = query, pred
            filled = min(filled + 1, n_context)
        if soft:
            yield pred.clone()
            continue
        yield label_map(pred, (height, width), upsample=upsample, patch=patch)


def _minmax_dino(probs: Tensor) -> Tensor:
    """DINO's ``norm_mask``: each label's map shifted to min 0 and scaled to max 1, if its max is > 0."""
    for channel in probs:
        if channel.max() > 0:
            channel.sub_(channel.min())
            channel.div_(channel.max())
    return probs


def label_map(pred: Tensor, size: tuple[int, int], *, upsample: str = "bilinear", patch: int | None = None) -> Tensor:
    """A frame's label map from its soft labels at feature resolution (see `propagate_labels`'s ``upsample``).

    Inputs: pred h×w×K soft labels; size (H, W) of the frame. Output: H×W uint8 labels (CPU).
    """
    soft = pred.permute(2, 0, 1)[None]  # (1, K, h, w)
    if upsample == "bilinear":
        full = F.interpolate(soft, size=size, mode="bilinear", align_corners=False)[0]  # (K, H, W)
        return full.argmax(dim=0).to(torch.uint8).cpu()
    if upsample == "patch":
        # eval_video_segmentation.py: upsample by the patch size, norm_mask, torch.max, then PIL nearest
        full = F.interpolate(soft, scale_factor=patch, mode="bilinear", align_corners=False,
                             recompute_scale_factor=False)[0]
        labels = torch.max(_minmax_dino(full), dim=0).indices.to(torch.uint8).cpu().numpy()
        if labels.shape != size:
            labels = np.array(Image.fromarray(labels).resize((size[1], size[0]), Image.NEAREST))
        return torch.from_numpy(labels)
    if upsample == "bilinear_minmax":
        # VFS (mmaction/models/trackers/vanilla_tracker.py): bilinear, min-max per label where its max > 0, argmax
        full = F.interpolate(soft, size=size, mode="bilinear", align_corners=False)
        low = full.flatten(2).min(dim=2).values[..., None, None]
        high = full.flatten(2).max(dim=2).values[..., None, None]
        full = torch.where(high > 0, (full - low) / (high - low + 1e-12), full)[0]
        return full.argmax(dim=0).to(torch.uint8).cpu()
    if upsample == "nearest":
        # the DINOv3 segmentation-tracking notebook: nearest upsampling, min-max per label (0/0 → 0), argmax
        full = F.interpolate(soft, size=size, mode="nearest")
        low = full.flatten(2).min(dim=2).values[..., None, None]
        high = full.flatten(2).max(dim=2).values[..., None, None]
        full = torch.nan_to_num((full - low) / (high - low), nan=0)[0]
        return full.argmax(dim=0).to(torch.uint8).cpu()
    raise ValueError(f"upsample={upsample!r}: expected one of {', '.join(UPSAMPLING)}")


def read_frame(path: str | Path) -> Tensor:
    """A JPEG/PNG frame as uint8 H×W×3."""
    with Image.open(path) as image:
        return torch.from_numpy(np.array(image.convert("RGB")))


DAVIS_FPS = 24.0  # DAVIS's frames are a 24 fps video (Perazzi et al., CVPR 2016): the overlays' default rate


def propagate_sequence(sequence: DavisSequence, out: str | Path, feature_fn: FeatureFn, *, overlay: bool = False,
                       fps: float | None = None, **protocol) -> Path:
    """Propagate one DAVIS sequence's first-frame annotation; writes ``out/<sequence>/<frame>.png``.

    ``overlay``: also ``out/<sequence>/overlay.mp4`` and ``overlay.gif`` at ``fps`` (None: DAVIS's 24), each
    object's outline and a legend over its frames (`vidssl.eval.overlay.OverlayVideo`), written frame by frame
    with the masks.
    Returns the sequence's result folder. ``protocol`` is passed to `propagate_labels`.
    """
    name = sequence.name
    if not sequence.annotations or sequence.annotations[0].stem != sequence.frames[0].stem:
        raise FileNotFoundError(f"sequence {name!r} has no annotation of its first frame {sequence.frames[0].name}")
    first_mask = read_mask(sequence.annotations[0])
    frame0 = read_frame(sequence.frames[0])
    if first_mask.shape != tuple(frame0.shape[:2]):
        raise ValueError(f"sequence {name!r}: first-frame annotation {sequence.annotations[0]} is "
                         f"{first_mask.shape[0]}×{first_mask.shape[1]} but frame {sequence.frames[0].name} is "
                         f"{frame0.shape[0]}×{frame0.shape[1]}")
    last = {"t": 0, "frame": frame0}  # the frame read last: the overlay draws on it without decoding it again

    def frame(t: int) -> Tensor:
        if last["t"] != t:
            last["t"], last["frame"] = t, read_frame(sequence.frames[t])
        return last["frame"]

    def feats(t: int) -> Tensor:
        if frame(t).shape != frame0.shape:
            raise ValueError(f"sequence {name!r}: frame {sequence.frames[t].name} is {tuple(frame(t).shape)}, "
                             f"the first frame is {tuple(frame0.shape)}")
        return feature_fn(frame(t))

    folder = Path(out) / name
    folder.mkdir(parents=True, exist_ok=True)
    maps = propagate_labels(feats, first_mask, len(sequence.frames), name=name, **protocol)
    video = None
    if overlay:
        from vidssl.eval.overlay import OverlayVideo

        video = OverlayVideo(folder, num_objects=int(first_mask.max()), num_frames=len(sequence.frames),
                             fps=fps or DAVIS_FPS)
    with video or nullcontext():
        for t, (frame_path, label_map) in enumerate(zip(sequence.frames, maps)):
            labels = label_map.numpy()
            write_mask(folder / f"{frame_path.stem}.png", labels)
            if video is not None:
                video.add(frame(t).numpy(), labels)
    return folder


def propagate_dataset(davis_root: str | Path, out: str | Path, feature_fn: FeatureFn, split: str = "val",
                      *, resolution: str = "480p", progress: bool = True, overlay: bool = False,
                      fps: float | None = None, **protocol) -> list[Path]:
    """Propagate every sequence of a DAVIS-layout split into ``out/<sequence>/<frame>.png``.

    ``protocol`` holds `propagate_labels`'s keyword arguments (n_context, topk, radius, temperature,
    restrict_first, window, pad_first, downsample, tile, ties, upsample, patch). ``overlay``: also each
    sequence's ``overlay.mp4`` and ``overlay.gif`` beside its masks (`propagate_sequence`). Returns the
    sequences' result folders.
    """
    sequences = davis(davis_root, split=split, resolution=resolution)
    folders = []
    for sequence in tqdm(sequences, desc=f"propagate {split}", unit="seq", disable=not progress):
        with torch.inference_mode():
            folders.append(propagate_sequence(sequence, out, feature_fn, overlay=overlay, fps=fps, **protocol))
    return folders
