"""InstSynth: prompt-guided instance synthesis for urban-scene instance segmentation (IS-Cityscapes)."""

__version__ = "0.1.0"
