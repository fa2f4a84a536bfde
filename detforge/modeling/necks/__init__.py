"""Necks that turn backbone features into pyramids (FPN)."""
