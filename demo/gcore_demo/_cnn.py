"""The CNN shared by the torch and jax backends: 3 × (Conv → BatchNorm → ReLU) + Linear."""

from __future__ import annotations

import dataclasses

WIDTHS = (16, 32, 32)


@dataclasses.dataclass(frozen=True)
class CNNSpec:
    """Kernel, padding and strides for one input shape ``(C, H, W)``."""

    in_channels: int
    kernel: tuple[int, int]
    padding: tuple[int, int]
    strides: tuple[tuple[int, int], ...]
    widths: tuple[int, ...]
    out_hw: tuple[int, int]
    n_classes: int

    @property
    def features(self) -> int:
        return self.widths[-1] * self.out_hw[0] * self.out_hw[1]

    def describe(self) -> str:
        k = "x".join(map(str, self.kernel))
        blocks = " → ".join(
            f"Conv{k}({w}, stride {s[1] if s[0] == 1 else s[0]}) → BN → ReLU"
            for w, s in zip(self.widths, self.strides, strict=True)
        )
        return f"CNN: {blocks} → Linear({self.features}, {self.n_classes})"


def cnn_spec(image_shape: tuple[int, int, int], n_classes: int) -> CNNSpec:
    """2-D images get 3×3 kernels; 1-pixel-high signals (MNIST-1D) get 1×5 kernels."""
    c, h, w = image_shape
    if h == 1:
        kernel, padding, strides = (1, 5), (0, 2), ((1, 1), (1, 2), (1, 2))
    else:
        kernel, padding, strides = (3, 3), (1, 1), ((1, 1), (2, 2), (2, 2))
    for (sh, sw), _ in zip(strides, WIDTHS, strict=True):
        h = (h + 2 * padding[0] - kernel[0]) // sh + 1
        w = (w + 2 * padding[1] - kernel[1]) // sw + 1
    return CNNSpec(c, kernel, padding, strides, WIDTHS, (h, w), n_classes)
