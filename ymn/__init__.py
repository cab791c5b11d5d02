"""ymn: fine-tune Stable Diffusion on weighted multi-character data and probe counting and face placement."""

__version__ = "0.1.0"
