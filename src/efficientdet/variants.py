"""The EfficientDet family as data: one frozen, typed row per variant.

The official rows (D0-D7x, Lite0-Lite4) are copied from the paper and the reference
implementations; they round and break the compound-scaling formulas in places,
so they are data, not formula output. :func:`compound_scaling` builds a row for any φ from the
paper's formulas, and :func:`get_config` resolves a name (with aliases) and applies overrides.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field

from .errors import ConfigError, closest
from .preprocess import IMAGENET_MEAN, IMAGENET_STD

FEATURE_NETWORKS = ("bifpn", "panet", "fpn")
FUSIONS = ("fast", "softmax", "sum")
ACTIVATIONS = ("silu", "relu6", "relu")
SEG_HEADS = ("p2", "decoder")
LITE_MEAN = (0.5, 0.5, 0.5)
LITE_STD = (0.5, 0.5, 0.5)


@dataclass(frozen=True)
class ModelConfig:
    """Everything that defines an EfficientDet network (not how it is trained).

    Attributes:
        name: canonical variant name, e.g. ``efficientdet_d0``.
        backbone: timm model name of the EfficientNet (``tf_`` = TF "same" padding, BN eps 1e-3).
        image_size: square network input side in pixels.
        fpn_channels: BiFPN width W (also the head width).
        fpn_layers: number of repeated feature-network layers (BiFPN depth D).
        head_layers: separable convs in each head before the predictor.
        fusion: ``fast`` (normalised ReLU weights), ``softmax`` or ``sum`` (no weights).
        feature_network: ``bifpn``, ``panet`` or ``fpn`` (the paper's Table 5 baselines).
        min_level, max_level: pyramid levels used (P3..P7; P3..P8 for D7x).
        num_classes: number of class outputs per anchor (90 for the published COCO weights).
        anchor_scale, num_scales, aspect_ratios: anchor geometry (see :mod:`efficientdet.anchors`).
        act: activation in the feature network and heads (``silu``; ``relu6`` for Lite).
        conv_bias: whether convs followed by BN carry a bias (the TF checkpoints of D0-D7x do).
        mean, std: input normalisation in [0, 1] units.
        backbone_drop_path: stochastic-depth rate of the backbone during training.
        drop_last_stage: take P5 from the backbone stage before its last and drop the last stage
            (B0: one 192 -> 320 MBConv at stride 32, 8 % of its multiply-adds); the ``_seg`` decoder
            rows do (see :func:`efficientdet.model.backbone.drop_last_block_stage`).
        detect: whether the network has the detection (class/box) heads.
        seg_head: segmentation head, or ``None``: ``p2`` (the paper's per-pixel classifier on P2, needs
            ``min_level=2``) or ``decoder`` (the official code's transposed-conv decoder from P_max down
            to P_min with skip concatenations); see :mod:`efficientdet.model.seg_heads`.
        seg_classes: segmentation classes, background included (index 0 by convention; 255 = ignore).
        seg_channels, seg_layers: width and depth of the ``p2`` classifier (the decoder uses the
            feature-network width and one transposed conv per level).
    """

    name: str
    backbone: str
    image_size: int
    fpn_channels: int
    fpn_layers: int
    head_layers: int
    fusion: str = "fast"
    feature_network: str = "bifpn"
    min_level: int = 3
    max_level: int = 7
    num_classes: int = 90
    anchor_scale: float = 4.0
    num_scales: int = 3
    aspect_ratios: tuple[tuple[float, float], ...] = ((1.0, 1.0), (1.4, 0.7), (0.7, 1.4))
    act: str = "silu"
    conv_bias: bool = True
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    backbone_drop_path: float = 0.2
    drop_last_stage: bool = False
    detect: bool = True
    seg_head: str | None = None
    seg_classes: int = 21
    seg_channels: int = 256
    seg_layers: int = 3
    paper_flops: float | None = field(default=None, compare=False)  # multiply-adds, for reference only
    reference_params: int | None = field(default=None, compare=False)

    @property
    def num_levels(self) -> int:
        return self.max_level - self.min_level + 1

    @property
    def num_anchors(self) -> int:
        """Anchors per feature-map location."""
        return self.num_scales * len(self.aspect_ratios)

    @property
    def tasks(self) -> tuple[str, ...]:
        """``("detect",)``, ``("segment",)`` or ``("detect", "segment")``."""
        return (("detect",) if self.detect else ()) + (("segment",) if self.seg_head else ())

    def validate(self) -> ModelConfig:
        """Raise :class:`ConfigError` for values the network cannot be built with."""
        if self.feature_network not in FEATURE_NETWORKS:
            raise ConfigError(f"feature_network={self.feature_network!r} is not one of {FEATURE_NETWORKS}")
        if self.fusion not in FUSIONS:
            raise ConfigError(f"fusion={self.fusion!r} is not one of {FUSIONS}")
        if self.act not in ACTIVATIONS:
            raise ConfigError(f"act={self.act!r} is not one of {ACTIVATIONS}")
        for key in ("image_size", "fpn_channels", "fpn_layers", "num_classes", "num_scales"):
            value = getattr(self, key)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ConfigError(f"{key}={value!r} must be a positive integer")
        if self.head_layers < 0:
            raise ConfigError(f"head_layers={self.head_layers} must be >= 0")
        for key in ("detect", "conv_bias", "drop_last_stage"):
            if not isinstance(getattr(self, key), bool):
                raise ConfigError(f"{key}={getattr(self, key)!r} must be true or false")
        if not 1 <= self.min_level <= self.max_level:
            raise ConfigError(f"levels {self.min_level}..{self.max_level} must satisfy 1 <= min <= max")
        if self.min_level > 3 or self.max_level < 5:
            raise ConfigError("levels must include P3..P5, where the backbone features are")
        if self.seg_head is not None and self.seg_head not in SEG_HEADS:
            raise ConfigError(f"seg_head={self.seg_head!r} is not one of {SEG_HEADS} (or None)")
        if not self.detect and self.seg_head is None:
            raise ConfigError("detect=False needs a seg_head ('p2' or 'decoder'): the network would have no head")
        if self.seg_head == "p2" and self.min_level != 2:
            raise ConfigError(f"seg_head='p2' classifies the P2 level; set min_level=2 (got {self.min_level})")
        if self.seg_head is not None:
            for key in ("seg_classes", "seg_channels", "seg_layers"):
                value = getattr(self, key)
                if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                    raise ConfigError(f"{key}={value!r} must be a positive integer")
            if self.seg_classes > 255:
                raise ConfigError(f"seg_classes={self.seg_classes} must be at most 255 (255 marks ignored pixels)")
        if self.image_size < 2**self.max_level:
            raise ConfigError(
                f"image_size={self.image_size} is smaller than the coarsest stride 2**{self.max_level}; "
                f"use at least {2**self.max_level}"
            )
        return self

    def replace(self, **overrides: object) -> ModelConfig:
        """A copy with ``overrides`` applied; unknown keys get the closest valid name."""
        names = [f.name for f in dataclasses.fields(self)]
        for key in overrides:
            if key not in names:
                raise ConfigError(f"unknown model option {key!r}{closest(key, names)}; valid: {', '.join(names)}")
        if "aspect_ratios" in overrides:
            overrides["aspect_ratios"] = tuple(tuple(float(v) for v in r) for r in overrides["aspect_ratios"])  # type: ignore[union-attr]
        for key in ("mean", "std"):
            if key in overrides:
                overrides[key] = tuple(float(v) for v in overrides[key])  # type: ignore[union-attr]
        return dataclasses.replace(self, **overrides).validate()  # type: ignore[arg-type]

    def to_dict(self) -> dict:
        """Plain-data form, stored in checkpoints (safe for ``weights_only`` loading)."""
        d = dataclasses.asdict(self)
        d["aspect_ratios"] = [list(r) for r in self.aspect_ratios]
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d

    @classmethod
    def from_dict(cls, data: dict) -> ModelConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in data.items() if k in names}
        if "aspect_ratios" in kwargs:
            kwargs["aspect_ratios"] = tuple(tuple(float(v) for v in r) for r in kwargs["aspect_ratios"])
        for key in ("mean", "std"):
            if key in kwargs:
                kwargs[key] = tuple(float(v) for v in kwargs[key])
        return cls(**kwargs).validate()


def _d(phi: str, backbone: str, size: int, ch: int, layers: int, heads: int, params: int, flops: float, **kw):
    return ModelConfig(
        name=f"efficientdet_{phi}",
        backbone=backbone,
        image_size=size,
        fpn_channels=ch,
        fpn_layers=layers,
        head_layers=heads,
        reference_params=params,
        paper_flops=flops,
        **kw,
    )


def _lite(i: str, size: int, ch: int, layers: int, heads: int, anchor_scale: float, params=None, **kw):
    return ModelConfig(
        name=f"efficientdet_lite{i}",
        backbone=f"tf_efficientnet_lite{i[0]}",
        image_size=size,
        fpn_channels=ch,
        fpn_layers=layers,
        head_layers=heads,
        fusion="sum",
        anchor_scale=anchor_scale,
        act="relu6",
        mean=LITE_MEAN,
        std=LITE_STD,
        reference_params=params,
        **kw,
    )


_ROWS = [
    _d("d0", "tf_efficientnet_b0", 512, 64, 3, 3, 3_880_067, 2.5e9),
    _d("d1", "tf_efficientnet_b1", 640, 88, 4, 3, 6_625_898, 6.1e9),
    _d("d2", "tf_efficientnet_b2", 768, 112, 5, 3, 8_097_039, 11e9),
    _d("d3", "tf_efficientnet_b3", 896, 160, 6, 4, 12_032_296, 25e9),
    _d("d4", "tf_efficientnet_b4", 1024, 224, 7, 4, 20_723_675, 55e9),
    _d("d5", "tf_efficientnet_b5", 1280, 288, 7, 4, 33_653_315, 135e9),
    _d("d6", "tf_efficientnet_b6", 1280, 384, 8, 5, 51_871_782, 226e9, fusion="sum"),
    _d("d7", "tf_efficientnet_b6", 1536, 384, 8, 5, 51_871_782, 325e9, fusion="sum", anchor_scale=5.0),
    _d("d7x", "tf_efficientnet_b7", 1536, 384, 8, 5, 77_147_166, 410e9, fusion="sum", max_level=8),
    _lite("0", 320, 64, 3, 3, 3.0, 3_243_470, backbone_drop_path=0.0),
    _lite("1", 384, 88, 4, 3, 3.0),
    _lite("2", 448, 112, 5, 3, 3.0),
    _lite("3", 512, 160, 6, 4, 4.0),
    _lite("3x", 640, 200, 6, 4, 3.0),
    _lite("4", 640, 224, 7, 4, 4.0, 15_130_894),
]


def segmentation_row(det: ModelConfig) -> ModelConfig:
    """The segmentation row scaled like the detection row ``det`` (the paper's D4 row at φ = 4).

    The paper's model (Table 3) is D4 with the BiFPN narrowed to 128 x 3 over P2-P7 and a 256 x 3
    P2 classifier. Each detection row keeps its backbone; the BiFPN width is scaled by the same
    128/224, rounded to a multiple of 8, its depth is the detection depth - 4 (at least 3), the
    classifier is twice the BiFPN width, 3 layers. Input size: 5/8 of the detection input rounded up
    to a multiple of 128 (640 px at D4: 17.7M parameters, 19.0B FLOPs against the paper's 17M / 18B,
    which no published input size is given for; 18B is ~624 px).

    ``efficientdet_d4_seg`` is the paper's model exactly. The other rows use the official code's
    decoder over P3-P7 instead (``seg_head="decoder"``): trained from scratch on the same budget it
    reached 2.2x the P2 classifier's mIoU (0.41 vs 0.19, ``bench/segmentation.py --kind photos``) at
    0.85x its FLOPs. They also take P5 from the backbone stage before its last
    (``drop_last_stage``): B0's last stage is 8 % of D0-seg's multiply-adds (at or below torchvision's
    LR-ASPP MobileNetV3 at 256 px) and dropping it did not lower the mIoU (BENCHMARKS.md).
    ``--model-override seg_head=p2 --model-override min_level=2 --model-override drop_last_stage=false``
    gives the paper's design at any row.
    """
    width = max(8, int(round(det.fpn_channels * 128 / 224 / 8) * 8))
    paper = det.name == "efficientdet_d4"
    return dataclasses.replace(
        det,
        name=f"{det.name}_seg",
        image_size=math.ceil(det.image_size * 5 / 8 / 128) * 128,
        fpn_channels=width,
        fpn_layers=max(3, det.fpn_layers - 4),
        min_level=2 if paper else 3,
        detect=False,
        seg_head="p2" if paper else "decoder",
        drop_last_stage=not paper,
        seg_channels=2 * width,
        seg_layers=3,
        paper_flops=18e9 if paper else None,
        reference_params=17_000_000 if paper else None,
    ).validate()


_ROWS += [segmentation_row(r) for r in _ROWS if re.fullmatch(r"efficientdet_d\d", r.name)]
VARIANTS: dict[str, ModelConfig] = {row.name: row for row in _ROWS}


def compound_scaling(phi: float, name: str | None = None, **overrides: object) -> ModelConfig:
    """A row from the paper's compound-scaling formulas for coefficient ``phi >= 0``.

    W = 64 * 1.35^φ rounded to a multiple of 8, D = 3 + φ, D_head = 3 + ⌊φ/3⌋,
    R = 512 + 128 φ (rounded to a multiple of 128), backbone EfficientNet-B⌊φ⌋ (B0-B8).
    Fractional φ interpolate width/resolution; depths use ⌊φ⌋.
    """
    if not isinstance(phi, int | float) or math.isnan(phi) or phi < 0 or phi > 8:
        raise ConfigError(f"compound coefficient phi={phi!r} must be a number in [0, 8]")
    width = int(round(64 * 1.35**phi / 8) * 8)
    depth = int(math.floor(phi))
    size = int(round((512 + 128 * phi) / 128) * 128)
    row = ModelConfig(
        name=name or f"efficientdet_phi{phi:g}",
        backbone=f"tf_efficientnet_b{depth}",
        image_size=size,
        fpn_channels=width,
        fpn_layers=3 + depth,
        head_layers=3 + depth // 3,
    )
    return row.replace(**overrides) if overrides else row.validate()


def canonical_name(name: str) -> str:
    """Map aliases (``d0``, ``efficientdet-d0``, ``tf_efficientdet_d0``, ``D0``) to the canonical name."""
    key = name.strip().lower().replace("-", "_")
    key = re.sub(r"^(tf_)?(efficientdet_?)?", "", key)
    if re.fullmatch(r"phi\d+(\.\d+)?", key):
        return f"efficientdet_{key}"
    return f"efficientdet_{key}"


def list_models() -> list[str]:
    """Canonical names of the official variants, in family order."""
    return list(VARIANTS)


def get_config(name: str, **overrides: object) -> ModelConfig:
    """The row for ``name`` (an official variant, an alias, or ``phiN`` for compound scaling).

    ``overrides`` replace fields (e.g. ``num_classes=3, image_size=256, feature_network='fpn'``);
    ``None`` values are ignored so CLI options can be passed through as they are.
    """
    overrides = {k: v for k, v in overrides.items() if v is not None}
    key = canonical_name(name)
    if key in VARIANTS:
        row = VARIANTS[key]
    elif m := re.fullmatch(r"efficientdet_phi(\d+(?:\.\d+)?)", key):
        row = compound_scaling(float(m.group(1)) if "." in m.group(1) else int(m.group(1)), name=key)
    else:
        short = [n.removeprefix("efficientdet_") for n in VARIANTS]
        hint = closest(key.removeprefix("efficientdet_"), short)
        raise ConfigError(f"unknown model {name!r}{hint}; run 'efficientdet models' for the list")
    return row.replace(**overrides) if overrides else row
