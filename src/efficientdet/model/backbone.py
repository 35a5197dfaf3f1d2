"""EfficientNet backbone from timm, returning the stride 8/16/32 features (P3, P4, P5), or from
stride 4 (P2) / 2 (P1) on when the feature network starts at a finer level."""

from __future__ import annotations

from pathlib import Path

import timm
import torch
from torch import nn

from ..errors import WeightsError
from .norm_act import use_memory_efficient_norm_act


def backbone_out_indices(min_level: int = 3) -> tuple[int, ...]:
    """timm feature indices for P_min..P5: index i has stride 2**(i + 1); (2, 3, 4) for P3..P5."""
    return tuple(range(min(min_level, 3) - 1, 5))


def create_backbone(
    name: str, drop_path_rate: float = 0.0, pretrained: bool | str | Path = False, min_level: int = 3
) -> nn.Module:
    """timm ``features_only`` EfficientNet with ``out_indices=(2, 3, 4)`` (strides 8, 16, 32), or
    ``(1, 2, 3, 4)`` (strides 4 .. 32) for ``min_level=2`` (P2, segmentation and small objects).

    Args:
        name: timm model name (``tf_efficientnet_b0`` ... ``tf_efficientnet_lite4``).
        drop_path_rate: stochastic depth during training.
        pretrained: ``False``; ``True`` to download timm's ImageNet weights (needs network);
            or a local file with the backbone's (timm classification or features) state dict.
    """
    out_indices = backbone_out_indices(min_level)
    model = timm.create_model(name, features_only=True, out_indices=out_indices, drop_path_rate=drop_path_rate)
    use_memory_efficient_norm_act(model)  # same numbers, ~1/3 less activation memory in training
    if pretrained is True:
        _load_timm_pretrained(model, name, out_indices)
    elif pretrained:
        load_backbone_file(model, Path(pretrained))
    return model


def _load_timm_pretrained(model: nn.Module, name: str, out_indices: tuple[int, ...]) -> None:
    from ..weights import network_available

    if not network_available("huggingface.co"):
        raise WeightsError(
            f"ImageNet weights for backbone {name!r} need a download and there is no network (or "
            "HF_HUB_OFFLINE=1); download them elsewhere (timm.create_model(name, pretrained=True)) and "
            "pass the saved state dict with --backbone-weights FILE, or train from scratch"
        )
    reference = timm.create_model(name, pretrained=True, features_only=True, out_indices=out_indices)
    model.load_state_dict(reference.state_dict())


def load_backbone_file(model: nn.Module, path: Path) -> None:
    """Load a timm EfficientNet state dict (classifier keys ignored) into the features model."""
    if not path.is_file():
        raise WeightsError(f"{path}: backbone weights file not found; check the path")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - reported as one line
        raise WeightsError(f"{path}: cannot read backbone weights ({type(exc).__name__}); re-download it") from exc
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    state = {k.removeprefix("backbone."): v for k, v in state.items()}
    wanted = model.state_dict()
    used = {k: v for k, v in state.items() if k in wanted}
    missing = [k for k in wanted if k not in used]
    if missing:
        raise WeightsError(
            f"{path}: not weights of this backbone ({len(missing)} tensors missing, e.g. {missing[0]!r}); "
            "pass the matching timm EfficientNet checkpoint"
        )
    try:
        model.load_state_dict(used)
    except RuntimeError as exc:
        raise WeightsError(f"{path}: tensor shapes do not match this backbone; pass the matching one") from exc
