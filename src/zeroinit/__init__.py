"""zeroinit: zero weight initialization with random biases (Schicho, 2023), as a
Lightning + Hydra experiment framework. See the README for the commands."""

__version__ = "0.1.0"
