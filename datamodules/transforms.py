"""albumentations image+mask pipelines (2.x API, strict so that arguments renamed between versions fail loudly).

Images stay uint8 until ``ToFloat(max_value=255)``: models take [0, 1] and normalise inside.
Masks use nearest interpolation (albumentations' default for masks) so class ids survive.
"""

from __future__ import annotations

import albumentations as A
import cv2


def build_transform(image_size: int, *, train: bool, augment: bool) -> A.Compose:
    ops: list = [A.Resize(image_size, image_size, interpolation=cv2.INTER_AREA)]
    if train and augment:
        ops += [
            A.HorizontalFlip(p=0.5),
            A.VerticalFlip(p=0.5),
            A.Affine(scale=(0.9, 1.1), rotate=(-20, 20), translate_percent=(-0.05, 0.05), border_mode=cv2.BORDER_REFLECT_101, p=0.5),
            A.ColorJitter(brightness=0.15, contrast=0.15, saturation=0.15, hue=0.02, p=0.5),
        ]
    ops.append(A.ToFloat(max_value=255))
    return A.Compose(ops, strict=True, seed=0)
