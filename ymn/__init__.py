"""ymn: fine-tune SD on weighted multi-character data; probe counting and face placement."""

__version__ = "0.1.0"
