"""Training engine: process launch and distributed setup (``launch.py``), the training loop."""
