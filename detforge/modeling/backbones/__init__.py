"""Backbones: each returns ``dict[str, Tensor]`` of named feature maps and describes them with
``output_shape()``."""
