"""Checkpoints: this project's format, effdet's published state dicts, download and caching.

Two kinds of file are recognised automatically:

* this project's checkpoints: a dict with ``"format": "efficientdet"``, the model config, the
  (EMA) weights under ``"model"``, class names and original category ids (``.pt``), or the same as
  ``.safetensors`` with the metadata in the header;
* effdet's bare ``state_dict`` (the published COCO weights and ``torch.save(model.state_dict())``
  of effdet models), converted by :func:`convert_effdet_state_dict`.

Files are always read without executing code (``torch.load(weights_only=True)`` or safetensors).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import socket
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from .coco_classes import coco90_classes
from .errors import WeightsError
from .labels import LabelMap
from .variants import canonical_name

FORMAT = "efficientdet"
RELEASE_URL = "https://github.com/rwightman/efficientdet-pytorch/releases/download/v0.1/"

# canonical variant -> published file (the 8 hex digits are the start of its sha256)
PUBLISHED_FILES: dict[str, str] = {
    "efficientdet_d0": "tf_efficientdet_d0_34-f153e0cf.pth",
    "efficientdet_d1": "tf_efficientdet_d1_40-a30f94af.pth",
    "efficientdet_d2": "tf_efficientdet_d2_43-8107aa99.pth",
    "efficientdet_d3": "tf_efficientdet_d3_47-0b525f35.pth",
    "efficientdet_d4": "tf_efficientdet_d4_49-f56376d9.pth",
    "efficientdet_d5": "tf_efficientdet_d5_51-c79f9be6.pth",
    "efficientdet_d6": "tf_efficientdet_d6_52-4eda3773.pth",
    "efficientdet_d7": "tf_efficientdet_d7_53-6d1d7a95.pth",
    "efficientdet_d7x": "tf_efficientdet_d7x-f390b87c.pth",
    "efficientdet_lite0": "tf_efficientdet_lite0-dfacfc78.pth",
    "efficientdet_lite1": "tf_efficientdet_lite1-6dc7ab30.pth",
    "efficientdet_lite2": "tf_efficientdet_lite2-86c5d55b.pth",
    "efficientdet_lite3": "tf_efficientdet_lite3-506852cb.pth",
    "efficientdet_lite3x": "tf_efficientdet_lite3x-8404c57b.pth",
    "efficientdet_lite4": "tf_efficientdet_lite4-391ddabc.pth",
}
# COCO val2017 AP of the published weights (effdet's hard-NMS evaluation), for reference.
PUBLISHED_AP = {"efficientdet_d0": 34.2, "efficientdet_d1": 40.1, "efficientdet_d2": 43.4, "efficientdet_d3": 47.1,
                "efficientdet_d4": 49.2, "efficientdet_d5": 51.2, "efficientdet_d6": 52.0, "efficientdet_d7": 53.1,
                "efficientdet_d7x": 54.3}  # fmt: skip


@dataclass
class Checkpoint:
    """What a weights file holds, in this project's layout."""

    state_dict: dict[str, torch.Tensor]
    path: Path
    kind: str  # "efficientdet" or "effdet"
    config: dict | None = None  # ModelConfig.to_dict() for this project's checkpoints
    labels: LabelMap | None = None  # names and category ids when the file has them
    extra: dict | None = None  # training state (optimizer, EMA, epoch ...) when present
    seg_class_names: list[str] | None = None  # segmentation classes (background first), when it has a seg head

    @property
    def num_classes(self) -> int:
        """Classes of the class predictor (bias length / anchors per location)."""
        bias = self.state_dict["class_net.predict.pw.bias"]
        anchors = self.state_dict["box_net.predict.pw.bias"].shape[0] // 4
        return bias.shape[0] // anchors


def cache_dir() -> Path:
    """``$EFFICIENTDET_CACHE`` or ``~/.cache/efficientdet``."""
    return Path(os.environ.get("EFFICIENTDET_CACHE", Path.home() / ".cache" / "efficientdet"))


def published_file(spec: str) -> str | None:
    """The published file name for ``spec`` (a variant name, alias or file name), else None."""
    base = Path(spec).name
    if base in PUBLISHED_FILES.values():
        return base
    key = canonical_name(spec.removesuffix(".pth"))
    return PUBLISHED_FILES.get(key)


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def verify_hash(path: Path, filename: str) -> None:
    """Check the file against the sha256 prefix in its published name (``name-<hex>.pth``)."""
    m = re.search(r"-([0-9a-f]{8,64})\.pth$", filename)
    if not m:
        return
    digest = sha256_of(path)
    if not digest.startswith(m.group(1)):
        raise WeightsError(
            f"{path}: sha256 {digest[:8]}... does not match the published {m.group(1)}; the file is corrupt or "
            "not the published one: delete it and download it again"
        )


def network_available(host: str = "github.com", timeout: float = 3.0) -> bool:
    """Whether ``host`` answers on port 443 within ``timeout`` s; False at once when offline mode is set
    (``EFFICIENTDET_OFFLINE=1`` or ``HF_HUB_OFFLINE=1``), so offline runs fail fast instead of retrying."""
    if os.environ.get("EFFICIENTDET_OFFLINE") == "1" or os.environ.get("HF_HUB_OFFLINE") == "1":
        return False
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def download_published(filename: str, progress: bool = True) -> Path:
    """Path of a published weights file in the cache, downloading and verifying it on first use."""
    target = cache_dir() / filename
    for candidate in (target, Path(torch.hub.get_dir()) / "checkpoints" / filename):
        if candidate.is_file():
            verify_hash(candidate, filename)
            return candidate
    url = RELEASE_URL + filename
    if not network_available():
        raise WeightsError(
            f"cannot download {filename}: no network; fetch {url} elsewhere and put it at {target} "
            "(or pass --weights /path/to/that/file)"
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, suffix=".part")
    os.close(fd)
    try:
        torch.hub.download_url_to_file(url, tmp, progress=progress)
        verify_hash(Path(tmp), filename)
        os.replace(tmp, target)
    except WeightsError:
        raise
    except Exception as exc:  # network errors: one line
        raise WeightsError(f"download of {url} failed ({exc}); retry, or put the file at {target}") from exc
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


def resolve_weights(spec: str | Path) -> Path:
    """A local file, or a published name (``coco``-style names resolved by the variant)."""
    path = Path(spec)
    if path.is_file():
        return path
    name = published_file(str(spec))
    if name is not None:
        return download_published(name)
    if path.suffix or os.sep in str(spec):
        raise WeightsError(f"{spec}: weights file not found; check the path")
    raise WeightsError(
        f"--weights {spec!r} is neither a file nor a published name; use a path or one of: "
        + ", ".join(sorted(PUBLISHED_FILES.values()))
    )


def _torch_load(path: Path) -> object:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError as exc:
        raise WeightsError(f"{path}: weights file not found; check the path") from exc
    except Exception as exc:
        text = str(exc)
        if (
            "Weights only load failed" in text
            or "Unsupported global" in text
            or "UnpicklingError" in type(exc).__name__
        ):
            raise WeightsError(
                f"{path}: refused to load: the file contains Python objects or code, not just tensors "
                "(loading runs with weights_only=True); re-save it as a plain state_dict from a trusted source"
            ) from exc
        raise WeightsError(
            f"{path}: not a readable checkpoint ({type(exc).__name__}: {text.splitlines()[0][:120] if text else ''}); "
            "the file is truncated or corrupt: copy or download it again"
        ) from exc


def _load_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open has no __iter__
    except Exception as exc:
        raise WeightsError(f"{path}: not a readable safetensors file ({exc}); copy or export it again") from exc
    return tensors, meta


def is_effdet_state_dict(state: dict) -> bool:
    return any(k.startswith("fpn.cell.") for k in state) and any(k.startswith("class_net.conv_rep") for k in state)


def _labels(info: dict) -> LabelMap | None:
    """The label map a checkpoint's ``class_names`` / ``category_ids`` entries describe, if any."""
    names, ids = info.get("class_names"), info.get("category_ids")
    if not names and not ids:
        return None
    n = len(names or ids)
    return LabelMap.create(names or None, ids or None, n)


def load_checkpoint(spec: str | Path) -> Checkpoint:
    """Read a weights file (see module docstring) into this project's layout, safely."""
    path = resolve_weights(spec)
    if path.suffix == ".safetensors":
        tensors, meta = _load_safetensors(path)
        if meta.get("format") == FORMAT:
            info = json.loads(meta.get("info", "{}"))
            return Checkpoint(tensors, path, FORMAT, info.get("config"), _labels(info),
                              seg_class_names=info.get("seg_class_names"))
        obj: object = tensors
    else:
        obj = _torch_load(path)
    if not isinstance(obj, dict):
        raise WeightsError(f"{path}: expected a checkpoint dict or state_dict, found {type(obj).__name__}")
    if obj.get("format") == FORMAT:
        if not isinstance(obj.get("model"), dict):
            raise WeightsError(f"{path}: checkpoint has no 'model' weights; it is incomplete: use another checkpoint")
        return Checkpoint(obj["model"], path, FORMAT, obj.get("config"), _labels(obj), extra=obj,
                          seg_class_names=obj.get("seg_class_names"))
    if "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if "model" in obj and isinstance(obj["model"], dict):
        obj = obj["model"]
    if all(isinstance(v, torch.Tensor) for v in obj.values()) and is_effdet_state_dict(obj):
        labels = LabelMap(*map(tuple, coco90_classes())) if published_file(path.name) else None
        return Checkpoint(convert_effdet_state_dict(obj), path, "effdet", None, labels)
    if all(isinstance(v, torch.Tensor) for v in obj.values()) and "class_net.predict.pw.bias" in obj:
        return Checkpoint(obj, path, FORMAT)
    raise WeightsError(
        f"{path}: not an EfficientDet checkpoint (no class_net/fpn tensors); pass a file saved by "
        "'efficientdet train' or an effdet state_dict"
    )


_EFFDET_RULES = [
    (r"^fpn\.cell\.(\d+)\.fnode\.(\d+)\.combine\.edge_weights$", r"fpn.layers.\1.nodes.\2.fusion.weight"),
    (
        r"^fpn\.cell\.(\d+)\.fnode\.(\d+)\.combine\.resample\.(\d+)\.conv\.(conv|bn)\.",
        r"fpn.layers.\1.nodes.\2.inputs.\3.\4.",
    ),
    (r"^fpn\.cell\.(\d+)\.fnode\.(\d+)\.after_combine\.conv\.conv_(dw|pw)\.", r"fpn.layers.\1.nodes.\2.conv.\3."),
    (r"^fpn\.cell\.(\d+)\.fnode\.(\d+)\.after_combine\.conv\.bn\.", r"fpn.layers.\1.nodes.\2.conv.bn."),
    (r"^(class_net|box_net)\.conv_rep\.(\d+)\.conv_(dw|pw)\.", r"\1.convs.\2.\3."),
    (r"^(class_net|box_net)\.predict\.conv_(dw|pw)\.", r"\1.predict.\2."),
]  # fmt: skip


def convert_effdet_state_dict(state: dict[str, torch.Tensor], bn_level_first: bool | None = None) -> dict:
    """effdet layout -> this project's layout.

    Renames modules, moves ``fpn.resample.{i}`` (the P6.. projections) to ``fpn.extra.{i-3}``,
    reorders head BNs stored level-first (effdet's ``head_bn_level_first``), and permutes the
    box predictor's channels from (ty, tx, th, tw) to (tx, ty, tw, th).
    """
    out: dict[str, torch.Tensor] = {}
    first_extra = min((int(m.group(1)) for k in state if (m := re.match(r"^fpn\.resample\.(\d+)\.", k))), default=3)
    if bn_level_first is None:
        head_layers = len({k.split(".")[2] for k in state if k.startswith("class_net.conv_rep.")})
        first = {int(k.split(".")[2]) for k in state if k.startswith("class_net.bn_rep.")}
        bn_level_first = len(first) != head_layers
    for key, value in state.items():
        new = key
        if key.startswith("backbone."):
            new = key
        elif m := re.match(r"^fpn\.resample\.(\d+)\.conv\.(conv|bn)\.(.*)$", key):
            new = f"fpn.extra.{int(m.group(1)) - first_extra}.proj.{m.group(2)}.{m.group(3)}"
        elif m := re.match(r"^(class_net|box_net)\.bn_rep\.(\d+)\.(\d+)\.bn\.(.*)$", key):
            a, b = m.group(2), m.group(3)
            layer, level = (b, a) if bn_level_first else (a, b)
            new = f"{m.group(1)}.norms.{layer}.{level}.{m.group(4)}"
        else:
            for pattern, repl in _EFFDET_RULES:
                new, n = re.subn(pattern, repl, key)
                if n:
                    break
            else:
                raise WeightsError(f"unexpected tensor {key!r} in an effdet state_dict; is it an EfficientDet model?")
        out[new] = value
    for suffix in ("weight", "bias"):
        key = f"box_net.predict.pw.{suffix}"
        if key in out:
            t = out[key]
            out[key] = t.reshape(-1, 4, *t.shape[1:])[:, [1, 0, 3, 2]].reshape(t.shape).contiguous()
    return out


def save_checkpoint(path: str | Path, model: torch.nn.Module, extra: dict | None = None) -> Path:
    """Write this project's checkpoint atomically (temporary file in the same folder, then rename).

    ``model`` must carry ``config`` and ``labels`` (see ``create_model``).
    ``.safetensors`` paths store the weights and metadata only; ``.pt`` adds ``extra`` (training state).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    info = {"config": model.config.to_dict(), **model.labels.to_dict()}
    if getattr(model, "seg_class_names", None):
        info["seg_class_names"] = list(model.seg_class_names)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import save_file

            save_file(
                {k: v.contiguous() for k, v in state.items()},
                tmp,
                metadata={"format": FORMAT, "info": json.dumps(info)},
            )
        else:
            torch.save({"format": FORMAT, "version": 1, "model": state, **info, **(extra or {})}, tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def architecture_mismatch(a: dict, b: dict) -> str | None:
    """The first architecture field that differs between two config dicts, formatted, or None."""
    for key in (
        "backbone",
        "fpn_channels",
        "fpn_layers",
        "head_layers",
        "feature_network",
        "fusion",
        "min_level",
        "max_level",
        "num_scales",
        "conv_bias",
    ):
        if key in a and key in b and a[key] != b[key]:
            return f"{key} {a[key]!r} vs {b[key]!r}"
    return None
