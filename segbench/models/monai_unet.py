"""MONAI's ``UNet`` as a reference model (``model=monai_unet``), trained by segbench's own loop.

It is here so that ``segbench bench`` (and anyone) can ask which net reaches a given Dice sooner
on the same data, loop and budget; it is not a home for the norm slot: MONAI builds its own norm
layers, so only the norms MONAI has by the same name are offered. ``pip install segbench[bench]``.
"""

from __future__ import annotations

from torch import nn

from segbench.errors import SegbenchError

MONAI_NORMS = ("none", "batch", "instance", "group")


def monai_unet(
    in_channels: int,
    num_outputs: int,
    norm: str = "batch",
    norm_options: dict | None = None,
    cond_channels=None,
    channels=(16, 32, 64, 128, 256),
    strides=(2, 2, 2, 2),
    num_res_units: int = 2,
    dims: int = 2,
) -> nn.Module:
    try:
        from monai.networks.nets import UNet
    except ImportError:
        raise SegbenchError(
            "model=monai_unet needs MONAI: pip install 'segbench[bench]' (or pip install monai)"
        ) from None
    if norm not in MONAI_NORMS:
        raise SegbenchError(
            f"norm={norm} with model=monai_unet: MONAI's UNet builds its own norm layers; "
            f"valid: {', '.join(MONAI_NORMS)} (or use model=resunet for every segbench norm)"
        )
    if cond_channels is not None:
        raise SegbenchError("norm.cond_channels does not apply to model=monai_unet")
    options = dict(norm_options or {})
    layer = {
        "none": None,
        "batch": ("batch", {"eps": options.get("eps", 1e-5)}),
        "instance": ("instance", {"eps": options.get("eps", 1e-5), "affine": True}),
        "group": ("group", {"num_groups": options.get("num_groups") or 8, "eps": options.get("eps", 1e-5)}),
    }[norm]
    if len(strides) != len(channels) - 1:
        raise SegbenchError(
            f"model.strides={list(strides)} must have one entry fewer than model.channels={list(channels)}"
        )
    factor = 1
    for stride in strides:
        factor *= int(stride)

    class CheckedUNet(UNet):
        def check_input_size(self, *sides: int) -> None:
            """Refuse, in one line before training, a size MONAI's skip connections would fail on."""
            if any(side % factor for side in sides):
                shown = "x".join(map(str, sides))
                raise SegbenchError(
                    f"input size {shown} is not divisible by {factor}, which model=monai_unet "
                    f"with strides {list(strides)} needs; crop or pad to a multiple of {factor}"
                )

    try:
        return CheckedUNet(
            spatial_dims=dims,
            in_channels=in_channels,
            out_channels=num_outputs,
            channels=tuple(channels),
            strides=tuple(strides),
            num_res_units=int(num_res_units),
            norm=layer,
        )
    except ValueError as err:  # e.g. a group count that does not divide MONAI's layer widths
        raise SegbenchError(f"model=monai_unet with norm={norm}: {str(err).splitlines()[0]}") from None
