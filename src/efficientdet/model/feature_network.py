"""Feature networks built from node tables: BiFPN (default), PANet and FPN.

A node table is a list of :class:`Node` rows. The inputs of a layer get ids ``0..L-1`` (one per
level, finest first); every node gets the next id. A node fuses its inputs, each resampled to the
node's level (1x1 conv + BN when the channel count differs, TF-"same" 3x3/2 max-pool down,
nearest up), then applies activation -> separable 3x3 conv -> BN. The layer's outputs are the last
node of each level. The same module runs any table, so the paper's Table 5 baselines are data.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..variants import ModelConfig
from .layers import Projection, SeparableConv, activation, max_pool_same

FUSION_EPS = 1e-4


@dataclass(frozen=True)
class Node:
    """One fusion node: the pyramid ``level`` it produces and the ids of the nodes it fuses."""

    level: int
    inputs: tuple[int, ...]


def bifpn_nodes(min_level: int, max_level: int) -> list[Node]:
    """BiFPN: top-down (P_{max-1} .. P_min) then bottom-up (P_{min+1} .. P_max) with skip edges.

    For P3..P7: P6<-[3,4], P5<-[2,5], P4<-[1,6], P3<-[0,7], P4<-[1,7,8], P5<-[2,6,9],
    P6<-[3,5,10], P7<-[4,11].
    """
    last = {lvl: [i] for i, lvl in enumerate(range(min_level, max_level + 1))}
    nodes: list[Node] = []
    next_id = max_level - min_level + 1
    for lvl in range(max_level - 1, min_level - 1, -1):
        nodes.append(Node(lvl, (last[lvl][-1], last[lvl + 1][-1])))
        last[lvl].append(next_id)
        next_id += 1
    for lvl in range(min_level + 1, max_level + 1):
        same_level = (last[lvl][0], last[lvl][-1]) if lvl < max_level else (last[lvl][0],)
        nodes.append(Node(lvl, same_level + (last[lvl - 1][-1],)))
        last[lvl].append(next_id)
        next_id += 1
    return nodes


def _top_down(min_level: int, max_level: int, last: dict[int, list[int]], next_id: int) -> tuple[list[Node], int]:
    nodes = []
    for lvl in range(max_level, min_level - 1, -1):
        inputs = (last[lvl][-1],) if lvl == max_level else (last[lvl][-1], last[lvl + 1][-1])
        nodes.append(Node(lvl, inputs))
        last[lvl].append(next_id)
        next_id += 1
    return nodes, next_id


def fpn_nodes(min_level: int, max_level: int) -> list[Node]:
    """FPN: one top-down path (the coarsest level is a single-input node)."""
    last = {lvl: [i] for i, lvl in enumerate(range(min_level, max_level + 1))}
    nodes, _ = _top_down(min_level, max_level, last, max_level - min_level + 1)
    return nodes


def panet_nodes(min_level: int, max_level: int) -> list[Node]:
    """PANet: the FPN top-down path, then a bottom-up path (the finest level single-input)."""
    last = {lvl: [i] for i, lvl in enumerate(range(min_level, max_level + 1))}
    nodes, next_id = _top_down(min_level, max_level, last, max_level - min_level + 1)
    for lvl in range(min_level, max_level + 1):
        inputs = (last[lvl][-1],) if lvl == min_level else (last[lvl][-1], last[lvl - 1][-1])
        nodes.append(Node(lvl, inputs))
        last[lvl].append(next_id)
        next_id += 1
    return nodes


NODE_TABLES = {"bifpn": bifpn_nodes, "panet": panet_nodes, "fpn": fpn_nodes}


class Fusion(nn.Module):
    """Weighted fusion of same-shaped inputs.

    ``fast``: ``O = Σ relu(w_i) I_i / (ε + Σ relu(w_j))``, ε = 1e-4; ``softmax``: ``Σ softmax(w)_i I_i``;
    ``sum``: ``Σ I_i`` (no weights). Weights start at 1.
    """

    def __init__(self, num_inputs: int, method: str) -> None:
        super().__init__()
        self.method = method
        self.weight = nn.Parameter(torch.ones(num_inputs)) if method != "sum" else None

    def normalized_weights(self, dtype: torch.dtype | None = None) -> torch.Tensor | None:
        """The per-input fusion weights (``fast`` or ``softmax`` normalised), or None for ``sum``."""
        if self.weight is None:
            return None
        w = self.weight if dtype is None else self.weight.to(dtype)
        return F.relu(w) / (F.relu(w).sum() + FUSION_EPS) if self.method == "fast" else torch.softmax(w, dim=0)

    def forward(self, inputs: list[torch.Tensor]) -> torch.Tensor:
        w = self.normalized_weights(inputs[0].dtype)
        if w is None:
            out = inputs[0]
            for x in inputs[1:]:
                out = out + x
            return out
        out = inputs[0] * w[0]
        for i in range(1, len(inputs)):
            out = out + inputs[i] * w[i]
        return out


class FusionNode(nn.Module):
    """Resample each input to the node's level, fuse, activation -> separable conv -> BN."""

    def __init__(self, node: Node, in_channels: list[int], levels: list[int], cfg: ModelConfig) -> None:
        super().__init__()
        self.level = node.level
        self.input_ids = node.inputs
        self.input_levels = [levels[i] for i in node.inputs]
        self.inputs = nn.ModuleDict(
            {
                str(i): Projection(in_channels[i], cfg.fpn_channels, bias=cfg.conv_bias)
                for i in node.inputs
                if in_channels[i] != cfg.fpn_channels
            }
        )
        self.fusion = Fusion(len(node.inputs), cfg.fusion)
        self.act = activation(cfg.act)
        self.conv = SeparableConv(cfg.fpn_channels, cfg.fpn_channels, bias=cfg.conv_bias, norm=True)

    def forward(self, feats: list[torch.Tensor], size: tuple[int, int]) -> torch.Tensor:
        resampled = []
        for i, lvl in zip(self.input_ids, self.input_levels):
            x = feats[i]
            if str(i) in self.inputs:
                x = self.inputs[str(i)](x)
            while lvl < self.level:  # finer input: halve with TF-same max-pool
                x = max_pool_same(x)
                lvl += 1
            if lvl > self.level:  # coarser input: nearest upsampling to the node's size
                x = F.interpolate(x, size=size, mode="nearest")
            resampled.append(x)
        return self.conv(self.act(self.fusion(resampled)))


class FeatureLayer(nn.Module):
    """One repeated layer of the feature network (levels in, levels out)."""

    def __init__(self, nodes: list[Node], in_channels: list[int], cfg: ModelConfig) -> None:
        super().__init__()
        levels = list(range(cfg.min_level, cfg.max_level + 1))
        channels, node_levels = list(in_channels), list(levels)
        self.nodes = nn.ModuleList()
        for node in nodes:
            self.nodes.append(FusionNode(node, channels, node_levels, cfg))
            channels.append(cfg.fpn_channels)
            node_levels.append(node.level)
        self.levels = levels
        self.node_levels = node_levels
        # output of each level = the last node (or input) of that level
        self.output_ids = [max(i for i, lv in enumerate(node_levels) if lv == level) for level in levels]

    def forward(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        sizes = {lvl: (int(f.shape[-2]), int(f.shape[-1])) for lvl, f in zip(self.levels, feats)}
        feats = list(feats)  # never mutate the caller's list
        for node in self.nodes:
            feats.append(node(feats, sizes[node.level]))
        return [feats[i] for i in self.output_ids]


class ExtraLevel(nn.Module):
    """P6 from P5 (1x1 conv + BN when channels differ, then max-pool), P7.. from the previous."""

    def __init__(self, in_channels: int, out_channels: int, bias: bool) -> None:
        super().__init__()
        self.proj = Projection(in_channels, out_channels, bias) if in_channels != out_channels else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.proj is not None:
            x = self.proj(x)
        return max_pool_same(x)


class FeatureNetwork(nn.Module):
    """Backbone P3..P5 -> extra levels up to ``max_level`` -> ``fpn_layers`` repeated layers."""

    def __init__(self, cfg: ModelConfig, backbone_channels: list[int]) -> None:
        super().__init__()
        nodes = NODE_TABLES[cfg.feature_network](cfg.min_level, cfg.max_level)
        self.num_backbone = len(backbone_channels)
        extra, ch = [], backbone_channels[-1]
        for _ in range(cfg.num_levels - len(backbone_channels)):
            extra.append(ExtraLevel(ch, cfg.fpn_channels, bias=cfg.conv_bias))
            ch = cfg.fpn_channels
        self.extra = nn.ModuleList(extra)
        in_channels = list(backbone_channels) + [cfg.fpn_channels] * len(extra)
        self.layers = nn.ModuleList()
        for _ in range(cfg.fpn_layers):
            self.layers.append(FeatureLayer(nodes, in_channels, cfg))
            in_channels = [cfg.fpn_channels] * cfg.num_levels

    def forward(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        feats = list(feats)
        for extra in self.extra:
            feats.append(extra(feats[-1]))
        for layer in self.layers:
            feats = layer(feats)
        return feats
