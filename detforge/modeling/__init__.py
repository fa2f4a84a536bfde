"""Detection models: backbones, necks, heads, detectors and their building blocks."""
