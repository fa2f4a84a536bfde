"""``ImageList``: a batch of differently sized images padded into one tensor."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["ImageList"]


@dataclass(eq=False)
class ImageList:
    """Images of different sizes padded at the bottom and right to one size.

    Attributes:
        tensor (Tensor[B, C, H, W]): the padded batch; ``H`` and ``W`` are multiples of the
            size divisor it was built with.
        image_sizes: ``(height, width)`` of each image before padding.
        mask (Tensor[B, H, W] | None): ``True`` on padding pixels (DETR-style models); built on
            request by :meth:`from_tensors`.
    """

    tensor: Tensor
    image_sizes: list[tuple[int, int]]
    mask: Tensor | None = None

    def __post_init__(self) -> None:
        if self.tensor.dim() != 4:
            raise ValueError(
                f"ImageList: `tensor` must be [B, C, H, W], got {list(self.tensor.shape)}"
            )
        if len(self.image_sizes) != self.tensor.shape[0]:
            raise ValueError(
                f"ImageList: {len(self.image_sizes)} image sizes for a batch of "
                f"{self.tensor.shape[0]}"
            )
        hp, wp = self.tensor.shape[-2:]
        for i, (h, w) in enumerate(self.image_sizes):
            if h > hp or w > wp:
                raise ValueError(
                    f"ImageList: image {i} is {h}x{w}, larger than the batch {hp}x{wp}"
                )

    def __len__(self) -> int:
        return len(self.image_sizes)

    def __getitem__(self, i: int) -> Tensor:
        """Image ``i`` without its padding, ``Tensor[C, h, w]`` (a view)."""
        h, w = self.image_sizes[i]
        return self.tensor[i, :, :h, :w]

    def to(self, device: torch.device | str) -> ImageList:
        """A copy on ``device``."""
        mask = None if self.mask is None else self.mask.to(device)
        return ImageList(self.tensor.to(device), list(self.image_sizes), mask)

    @staticmethod
    def from_tensors(
        images: Sequence[Tensor],
        *,
        size_divisibility: int = 0,
        pad_value: float = 0.0,
        with_mask: bool = False,
        memory_format: torch.memory_format = torch.contiguous_format,
    ) -> ImageList:
        """Pad a list of images to a common size.

        Args:
            images: ``Tensor[C, H_i, W_i]`` each, same ``C``, dtype and device.
            size_divisibility: if > 0, the padded height and width are rounded up to a multiple
                of it (e.g. 32 for an FPN whose coarsest level has stride 32).
            pad_value: value written into the padding.
            with_mask: also build the padding mask.
            memory_format: layout of the batch tensor; ``torch.channels_last`` makes oneDNN
                (CPU) and cuDNN convolutions faster and carries through the whole network.

        Returns:
            ImageList: images at the top-left of the batch tensor, padding after them.
        """
        if len(images) == 0:
            raise ValueError("ImageList.from_tensors: `images` is empty")
        for i, img in enumerate(images):
            if not isinstance(img, Tensor) or img.dim() != 3:
                got = list(img.shape) if isinstance(img, Tensor) else type(img).__name__
                raise ValueError(f"ImageList.from_tensors: image {i} must be [C, H, W], got {got}")
            if img.shape[0] != images[0].shape[0] or img.dtype != images[0].dtype:
                raise ValueError(
                    f"ImageList.from_tensors: image {i} is {img.dtype} with {img.shape[0]} "
                    f"channels, image 0 is {images[0].dtype} with {images[0].shape[0]}"
                )
            if img.device != images[0].device:
                raise ValueError(
                    f"ImageList.from_tensors: image {i} is on {img.device}, "
                    f"image 0 on {images[0].device}"
                )
        sizes = [(int(im.shape[-2]), int(im.shape[-1])) for im in images]
        max_h = max(h for h, _ in sizes)
        max_w = max(w for _, w in sizes)
        if size_divisibility > 1:
            d = size_divisibility
            max_h = (max_h + d - 1) // d * d
            max_w = (max_w + d - 1) // d * d
        c = images[0].shape[0]
        batch = torch.empty(
            (len(images), c, max_h, max_w),
            dtype=images[0].dtype,
            device=images[0].device,
            memory_format=memory_format,
        )
        if any(h != max_h or w != max_w for h, w in sizes):
            batch.fill_(pad_value)
        for i, img in enumerate(images):
            batch[i, :, : img.shape[-2], : img.shape[-1]].copy_(img)
        mask = None
        if with_mask:
            mask = torch.ones(len(images), max_h, max_w, dtype=torch.bool, device=batch.device)
            for i, (h, w) in enumerate(sizes):
                mask[i, :h, :w] = False
        return ImageList(batch, sizes, mask)
