"""The EfficientDet network: backbone -> feature network -> shared class/box heads and/or a
semantic-segmentation head (:mod:`.seg_heads`).

``forward`` is the same in training and inference and returns raw outputs only; the loss
(:mod:`efficientdet.loss`) and post-processing (:mod:`efficientdet.inference.postprocess`) are separate.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path

import torch
from torch import nn

from ..labels import LabelMap
from ..variants import ModelConfig
from .backbone import create_backbone
from .feature_network import FeatureNetwork
from .heads import box_head, class_head, reset_class_head
from .seg_heads import seg_head


class EfficientDet(nn.Module):
    """EfficientDet for one :class:`ModelConfig` row.

    ``forward(images)`` takes normalised images (B, 3, H, W), H and W divisible by
    ``2 ** max_level`` for the published geometry, and returns ``(cls_logits, box_deltas)``: two
    lists with one tensor per level P_min..P_max, shaped (B, A * C, H_l, W_l) and (B, A * 4, H_l, W_l).
    Channel index = anchor * C + class and anchor * 4 + coordinate, coordinates (tx, ty, tw, th);
    :func:`flatten_outputs` turns them into (B, ΣHWA, C) and (B, ΣHWA, 4) in anchor order
    (level, y, x, anchor), the order of :func:`efficientdet.anchors.generate_anchors`.

    With a segmentation head (``config.seg_head``) the segmentation logits (B, K, H, W) at the input
    resolution come too: a segmentation-only network (``config.detect=False``) returns just that
    tensor, a joint one ``(cls_logits, box_deltas, seg_logits)``.
    """

    def __init__(self, config: ModelConfig, pretrained_backbone: bool | str | Path = False) -> None:
        super().__init__()
        self.config = config.validate()
        self.backbone = create_backbone(config.backbone, config.backbone_drop_path, pretrained_backbone,
                                        min_level=config.min_level, drop_last_stage=config.drop_last_stage)
        channels = list(self.backbone.feature_info.channels())
        self.fpn = FeatureNetwork(config, channels)
        args = (config.fpn_channels, config.head_layers, config.num_levels, config.num_anchors)
        self.class_net = class_head(*args, config.num_classes, config.act, config.conv_bias) if config.detect else None
        self.box_net = box_head(*args, config.act, config.conv_bias) if config.detect else None
        self.seg_net = seg_head(config) if config.seg_head else None
        self._init_feature_network()
        #: what each class index means (names, the data set's category ids, ignored slots)
        self.labels = LabelMap.default(config.num_classes)

    def _init_feature_network(self) -> None:
        for m in self.fpn.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    #: training only: recompute the stem and first N backbone stages in the backward pass instead of
    #: keeping their activations (the high-resolution ones, most of the memory); 0 = off. Gradients and
    #: BN running statistics are unchanged (the recomputation does not update the statistics again).
    recompute_stages: int = 0

    def forward(self, images: torch.Tensor):  # -> (cls, box) | seg | (cls, box, seg), see the class docstring
        feats = self.features(images)
        if self.seg_net is None:
            return self.class_net(feats), self.box_net(feats)
        seg = self.seg_net(feats, (int(images.shape[-2]), int(images.shape[-1])))
        if self.class_net is None:
            return seg
        return self.class_net(feats), self.box_net(feats), seg

    def features(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Feature-network outputs P_min..P_max, each (B, W, H_l, W_l)."""
        if self.recompute_stages and self.training and torch.is_grad_enabled():
            feats = self._backbone_recomputed(images)
        else:
            feats = self.backbone(images)
        return self.fpn(feats)

    def recomputable_stages(self) -> int:
        """The largest valid ``recompute_stages``: the backbone stages before the first output (0 if unknown)."""
        out_idx = getattr(self.backbone, "_stage_out_idx", None)
        if not out_idx or getattr(self.backbone, "feature_hooks", None) is not None:
            return 0
        return min(out_idx) - 1

    def _backbone_recomputed(self, images: torch.Tensor) -> list[torch.Tensor]:
        """timm ``EfficientNetFeatures.forward`` with the stem and first stages checkpointed."""
        from torch.utils.checkpoint import checkpoint

        bb = self.backbone
        out_idx = getattr(bb, "_stage_out_idx", None)
        if out_idx is None or getattr(bb, "feature_hooks", None) is not None:  # another timm layout
            return bb(images)
        n, limit = self.recompute_stages, self.recomputable_stages()
        if n > limit:
            raise ValueError(f"recompute_stages={n} reaches an output stage; use at most {limit}")
        stem_and_stages = (bb.conv_stem, bb.bn1, *bb.blocks[:n])
        calls = [0]

        def head(x: torch.Tensor) -> torch.Tensor:
            calls[0] += 1
            # a second call is the backward pass re-running the forward: keep the BN statistics as they are
            with _frozen_bn_statistics(stem_and_stages) if calls[0] > 1 else nullcontext():
                x = bb.bn1(bb.conv_stem(x))
                for b in bb.blocks[:n]:
                    x = b(x)
            return x

        x = checkpoint(head, images, use_reentrant=False)
        feats = []
        for i, b in enumerate(bb.blocks):
            if i >= n:
                x = b(x)
            if i + 1 in out_idx:
                feats.append(x)
        return feats

    def reset_classes(self, num_classes: int) -> None:
        """New class predictor for ``num_classes`` (fine-tuning); everything else is kept."""
        if self.class_net is None:
            raise ValueError("this network has no detection head; reset_seg_classes changes the segmentation classes")
        reset_class_head(self.class_net, self.config.num_anchors, num_classes)
        self.config = self.config.replace(num_classes=num_classes)
        self.labels = LabelMap.default(num_classes)

    def reset_seg_classes(self, seg_classes: int) -> None:
        """New segmentation classifier for ``seg_classes`` (fine-tuning); everything else is kept."""
        if self.seg_net is None:
            raise ValueError("this network has no segmentation head")
        device = next(self.parameters()).device
        self.config = self.config.replace(seg_classes=seg_classes)
        fresh = seg_head(self.config).to(device)
        old = self.seg_net.state_dict()
        keep = {k: v for k, v in old.items() if k in fresh.state_dict() and fresh.state_dict()[k].shape == v.shape}
        fresh.load_state_dict(keep, strict=False)
        self.seg_net = fresh

    def freeze_backbone(self, frozen: bool = True) -> None:
        for p in self.backbone.parameters():
            p.requires_grad_(not frozen)


@contextmanager
def _frozen_bn_statistics(modules: Iterable[nn.Module]) -> Iterator[None]:
    """BatchNorms in ``modules`` still normalise with batch statistics but leave their running
    statistics and batch counters unchanged (momentum 0: running = 1 * running + 0 * batch)."""
    norms = [m for part in modules for m in part.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [(m.momentum, None if m.num_batches_tracked is None else m.num_batches_tracked.clone()) for m in norms]
    for m in norms:
        m.momentum = 0.0
    try:
        yield
    finally:
        for m, (momentum, tracked) in zip(norms, saved):
            m.momentum = momentum
            if tracked is not None:
                m.num_batches_tracked.copy_(tracked)


def flatten_outputs(
    cls_logits: list[torch.Tensor], box_deltas: list[torch.Tensor], num_classes: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-level head outputs -> (B, N, C) logits and (B, N, 4) deltas, N = ΣH_l W_l A."""
    b = cls_logits[0].shape[0]
    cls = torch.cat([x.permute(0, 2, 3, 1).reshape(b, -1, num_classes) for x in cls_logits], dim=1)
    box = torch.cat([x.permute(0, 2, 3, 1).reshape(b, -1, 4) for x in box_deltas], dim=1)
    return cls, box


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
