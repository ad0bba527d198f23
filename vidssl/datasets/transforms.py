"""Clip-consistent augmentation and audio features.

A video transform maps decoded frames ``uint8 T×H×W×3`` and a ``torch.Generator`` to a float clip
``C×T×H×W``. One random draw (crop box, flip, jitter strengths) is shared by every frame of the view,
so motion stays coherent; two calls with different generator states give two independent views.
``ClipTransform(per_frame=True)`` draws the colour jitter and greyscale for every frame instead (DPC and
MemDPC's pretraining), the crop and flip staying shared. ``ClipTransform(blocks=N)`` delivers the clip cut
into N blocks, ``N×C×L×H×W`` (predictive coding), so that the training step reads the blocks as a view
instead of copying the clip to cut it.
Parameters are drawn from the generator passed in (never from the global RNG), which keeps a sample
reproducible from its seed in any worker; the image operations are torchvision.transforms.v2's
functional kernels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torchaudio
from torchvision.transforms.v2 import functional as F

GRAYSCALE_MODES = ("luma", "channel")

# ImageNet statistics: the usual choice for randomly initialised video backbones too.
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


def _uniform(low: float, high: float, generator: torch.Generator) -> float:
    return low + (high - low) * float(torch.rand((), generator=generator))


def _as_size(size: int | tuple[int, int] | list[int]) -> tuple[int, int]:
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


def normalize_video(clip: torch.Tensor, mean=MEAN, std=STD) -> torch.Tensor:
    """``C×T×H×W`` float in [0, 1] → normalised with per-channel mean/std."""
    m = torch.tensor(mean, dtype=clip.dtype, device=clip.device).view(-1, 1, 1, 1)
    s = torch.tensor(std, dtype=clip.dtype, device=clip.device).view(-1, 1, 1, 1)
    return (clip - m) / s


def denormalize_video(clip: torch.Tensor, mean=MEAN, std=STD) -> torch.Tensor:
    """Inverse of ``normalize_video`` (for pictures); works on ``C×T×H×W`` and ``B×C×T×H×W``."""
    shape = (-1, 1, 1, 1)
    m = torch.tensor(mean, dtype=clip.dtype, device=clip.device).view(shape)
    s = torch.tensor(std, dtype=clip.dtype, device=clip.device).view(shape)
    return (clip * s + m).clamp(0, 1)


def _to_tchw(frames: torch.Tensor) -> torch.Tensor:
    if frames.dtype != torch.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"expected uint8 frames T×H×W×3, got {frames.dtype} {tuple(frames.shape)}")
    return frames.permute(0, 3, 1, 2)


def to_blocks(clip_tchw: torch.Tensor, blocks: int) -> torch.Tensor:
    """Frames ``T×C×H×W`` → ``N×C×L×H×W``: N consecutive blocks of L = T/N frames (a copy, contiguous).

    Block n holds frames n·L … n·L + L − 1, as ``rearrange(clip, "c (n l) h w -> n c l h w")`` cuts a
    ``C×T×H×W`` clip.
    """
    frames = clip_tchw.shape[0]
    if blocks < 1 or frames % blocks:
        raise ValueError(f"ClipTransform.blocks={blocks} must divide the clip's {frames} frames "
                         f"(set it to the sampler's num_seq)")
    return clip_tchw.unflatten(0, (blocks, frames // blocks)).transpose(1, 2).contiguous()


def _finish(clip_tchw: torch.Tensor, normalize: bool, blocks: int | None = None) -> torch.Tensor:
    """Frames ``T×C×H×W`` → the clip ``C×T×H×W``, or its blocks ``N×C×L×H×W`` when ``blocks`` is set."""
    clip = clip_tchw.permute(1, 0, 2, 3).contiguous() if blocks is None else to_blocks(clip_tchw, blocks)
    return normalize_video(clip) if normalize else clip


@dataclass(frozen=True)
class ClipTransform:
    """Training augmentation: random resized crop, flip, colour jitter, grayscale, normalisation.

    Inputs:  frames uint8 T×H×W×3, generator
    Outputs: float C×T×H×W (normalised with ImageNet statistics when ``normalize``), or with ``blocks=N``
    the same values cut into N blocks of L = T/N frames, N×C×L×H×W

    ``scale`` is the crop's area fraction range and ``ratio`` its aspect range, as in
    ``RandomResizedCrop``; ``color_jitter`` is the brightness/contrast/saturation strength and ``hue``
    the hue strength, applied in a random order with probability ``jitter_p``; ``grayscale`` is the
    probability of a grey image: ``grayscale_mode="luma"`` (the ITU-R 601 luma) or ``"channel"`` (one
    RGB channel drawn at random, copied to all three: DPC/MemDPC's "random grey"), applied after the
    jitter, or before it with ``grayscale_first``. ``per_frame``: the jitter (its factors and order) and
    the greyscale are drawn for every frame on its own; the crop and flip stay shared by the clip.
    ``blocks``: deliver the clip as ``blocks`` blocks (the sampler's ``num_seq``; DPC/MemDPC/CPC read a batch
    B×N×C×L×H×W as (B·N) clips without a copy, as the official loaders deliver it); None: C×T×H×W.
    """

    size: int | tuple[int, int] = 112
    scale: tuple[float, float] = (0.3, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip: float = 0.5
    color_jitter: float = 0.4
    hue: float = 0.1
    jitter_p: float = 0.8
    grayscale: float = 0.0
    grayscale_mode: str = "luma"
    grayscale_first: bool = False
    per_frame: bool = False
    normalize: bool = True
    blocks: int | None = None

    def __post_init__(self) -> None:
        if self.blocks is not None and self.blocks < 1:
            raise ValueError(f"ClipTransform.blocks must be >= 1 (the sampler's num_seq) or null, got {self.blocks}")
        if self.grayscale_mode not in GRAYSCALE_MODES:
            raise ValueError(f"ClipTransform.grayscale_mode must be one of {GRAYSCALE_MODES}, "
                             f"got {self.grayscale_mode!r}")
        for name in ("flip", "jitter_p", "grayscale"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"ClipTransform.{name} is a probability, got {getattr(self, name)}")

    def _crop_box(self, height: int, width: int, g: torch.Generator) -> tuple[int, int, int, int]:
        area = height * width
        log_ratio = (math.log(self.ratio[0]), math.log(self.ratio[1]))
        for _ in range(10):
            target = area * _uniform(self.scale[0], self.scale[1], g)
            aspect = math.exp(_uniform(*log_ratio, g))
            w = round(math.sqrt(target * aspect))
            h = round(math.sqrt(target / aspect))
            if 0 < w <= width and 0 < h <= height:
                top = int(torch.randint(0, height - h + 1, (), generator=g))
                left = int(torch.randint(0, width - w + 1, (), generator=g))
                return top, left, h, w
        side = min(height, width)  # fallback: the centred square, as RandomResizedCrop does
        return (height - side) // 2, (width - side) // 2, side, side

    def _geometry(self, frames: torch.Tensor, g: torch.Generator) -> tuple[torch.Tensor, bool]:
        """The clip's random resized crop and flip: uint8 T×H×W×3 → uint8 T×3×size², and whether it flipped."""
        clip = _to_tchw(frames)
        top, left, h, w = self._crop_box(clip.shape[-2], clip.shape[-1], g)
        clip = F.resized_crop(clip, top, left, h, w, list(_as_size(self.size)), antialias=True)
        flipped = float(torch.rand((), generator=g)) < self.flip
        return (F.horizontal_flip(clip) if flipped else clip), flipped

    def __call__(self, frames: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        clip, _ = self._geometry(frames, generator)
        clip = F.to_dtype(clip, torch.float32, scale=True)
        if self.per_frame:
            clip = torch.cat([self._colour(frame, generator) for frame in clip.split(1)])
        else:
            clip = self._colour(clip, generator)
        return _finish(clip, self.normalize, self.blocks)

    def _colour(self, clip: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        """Jitter and greyscale, one draw for all of ``clip`` (T×C×H×W floats in [0, 1])."""
        if self.grayscale_first:
            clip = self._grey(clip, g)
        if self.color_jitter > 0 or self.hue > 0:
            if float(torch.rand((), generator=g)) < self.jitter_p:
                clip = self._jitter(clip, g)
        if not self.grayscale_first:
            clip = self._grey(clip, g)
        return clip

    def _grey(self, clip: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        if self.grayscale <= 0 or float(torch.rand((), generator=g)) >= self.grayscale:
            return clip
        if self.grayscale_mode == "channel":
            channel = int(torch.randint(0, 3, (), generator=g))
            return clip[:, channel : channel + 1].expand(-1, 3, -1, -1).contiguous()
        return F.rgb_to_grayscale(clip, num_output_channels=3)

    def _jitter(self, clip: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        s = self.color_jitter
        ops = [
            lambda x, f: F.adjust_brightness(x, f),
            lambda x, f: F.adjust_contrast(x, f),
            lambda x, f: F.adjust_saturation(x, f),
        ]
        factors = [_uniform(max(0.0, 1 - s), 1 + s, g) for _ in ops]
        hue = _uniform(-self.hue, self.hue, g)
        for i in torch.randperm(4, generator=g).tolist():
            if i < 3:
                clip = ops[i](clip, factors[i])
            elif self.hue > 0:
                clip = F.adjust_hue(clip, hue)
        return clip.clamp(0, 1)


@dataclass(frozen=True)
class EvalTransform:
    """Deterministic evaluation view: resize the short side to ``size`` and take the centre crop.

    Inputs:  frames uint8 T×H×W×3 (the generator is accepted and ignored)
    Outputs: float C×T×size×size
    """

    size: int = 112
    normalize: bool = True

    def __call__(self, frames: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        clip = F.resize(_to_tchw(frames), [self.size], antialias=True)
        clip = F.center_crop(clip, [self.size, self.size])
        return _finish(F.to_dtype(clip, torch.float32, scale=True), self.normalize)


@dataclass(frozen=True)
class LogMel:
    """Log-mel spectrogram of a waveform, the audio input of audio-visual methods.

    Inputs:  waveform float C×S in [-1, 1] at ``sample_rate`` (channels are averaged to mono)
    Outputs: float 1×n_mels×frames, frames = 1 + S // hop, natural log of (power + 1e-6)
    """

    sample_rate: int = 16000
    n_mels: int = 64
    win_ms: float = 25.0
    hop_ms: float = 10.0
    _mel: torchaudio.transforms.MelSpectrogram = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        win = int(round(self.sample_rate * self.win_ms / 1000))
        hop = int(round(self.sample_rate * self.hop_ms / 1000))
        n_fft = 1 << (win - 1).bit_length()  # next power of two: the fast FFT size
        mel = torchaudio.transforms.MelSpectrogram(
            sample_rate=self.sample_rate, n_fft=n_fft, win_length=win, hop_length=hop, n_mels=self.n_mels
        )
        object.__setattr__(self, "_mel", mel)

    @property
    def hop_length(self) -> int:
        return self._mel.hop_length

    def __call__(self, waveform: torch.Tensor) -> torch.Tensor:
        if waveform.ndim != 2:
            raise ValueError(f"expected a waveform C×S, got shape {tuple(waveform.shape)}")
        mono = waveform.float().mean(0, keepdim=True)
        return torch.log(self._mel(mono) + 1e-6)
