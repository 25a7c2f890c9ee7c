"""albumentations image+mask pipelines (2.x API, strict so that arguments renamed between versions fail loudly).

Images stay uint8 until ``ToFloat(max_value=255)``: models take [0, 1] and normalise inside.
Masks use nearest interpolation (albumentations' default for masks) so class ids survive.

Two ways to reach the square ``image_size x image_size`` input (``data.resize``):

* ``stretch`` (default): resize both sides to ``image_size``; a non-square image is distorted (a 428 x 569 fundus
  photograph is squeezed horizontally by 0.75 relative to vertically).
* ``pad``: resize the longest side to ``image_size`` keeping the aspect ratio (the short side becomes
  ``round(image_size * short / long)``, as albumentations' ``LongestMaxSize`` rounds), augment, then pad
  symmetrically to a square with black (0) pixels and background (0) labels; an odd padding puts the extra row or
  column at the bottom / right. Augmentations act before the padding, so the padding stays exactly 0.

Every pipeline also carries a ``valid`` mask (1 on image pixels, 0 on padding; all ones for ``stretch``) through the
same geometric transforms, so that the loss, the metrics and the attacks can exclude padding with one code path.
"""

from __future__ import annotations

import albumentations as A
import cv2

RESIZE_MODES = ("stretch", "pad")


def build_transform(image_size: int, *, train: bool, augment: bool, resize: str = "stretch") -> A.Compose:
    """The pipeline of one split; call it as ``transform(image=, mask=, valid=)`` (``valid``: uint8 ones HxW)."""
    if resize not in RESIZE_MODES:
        raise ValueError(f"data.resize={resize!r}: use 'stretch' (distorts non-square images) or 'pad' (keeps the "
                         "aspect ratio, padding excluded from metrics, loss and attacks)")
    ops: list = [resize_step(image_size, resize)]
    if train and augment:
        ops += [
            A.HorizontalFlip(p=0.5),
            A.VerticalFlip(p=0.5),
            A.Affine(scale=(0.9, 1.1), rotate=(-20, 20), translate_percent=(-0.05, 0.05), border_mode=cv2.BORDER_REFLECT_101, p=0.5),
            A.ColorJitter(brightness=0.15, contrast=0.15, saturation=0.15, hue=0.02, p=0.5),
        ]
    if resize == "pad":
        ops.append(A.PadIfNeeded(min_height=image_size, min_width=image_size, position="center",
                                 border_mode=cv2.BORDER_CONSTANT, fill=0, fill_mask=0))
    ops.append(A.ToFloat(max_value=255))
    return A.Compose(ops, strict=True, seed=0, additional_targets={"valid": "mask"})


def resize_step(image_size: int, resize: str = "stretch") -> A.BasicTransform:
    """The pipeline's first, deterministic step: ``stretch`` to ``image_size`` x ``image_size``, or the longest side to
    ``image_size`` for ``pad``. The decode cache (``datamodules/cache.py``) stores pairs already passed through it; on
    such an array the step is the identity (albumentations returns an image already at the target size unchanged), so
    cached and uncached samples are bit-identical."""
    if resize == "stretch":
        return A.Resize(image_size, image_size, interpolation=cv2.INTER_AREA)
    return A.LongestMaxSize(max_size=image_size, interpolation=cv2.INTER_AREA)


def padded_size(height: int, width: int, image_size: int) -> tuple[int, int]:
    """(h, w) of the image region of a ``pad`` input: the longest side is ``image_size``, the aspect ratio is kept."""
    scale = image_size / max(height, width)
    return max(1, round(height * scale)), max(1, round(width * scale))
