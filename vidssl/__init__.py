"""vidssl: self-supervised learning on video and audio."""

__version__ = "0.1.0"
