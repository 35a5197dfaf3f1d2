"""``efficientdet models``: the family with parameters and FLOPs measured from the model."""

from __future__ import annotations

import argparse
import json


def run(args: argparse.Namespace) -> int:
    from ..anchors import anchors_for
    from ..complexity import measure
    from ..variants import VARIANTS, compound_scaling
    from ..weights import PUBLISHED_AP, PUBLISHED_FILES

    rows = []
    configs = list(VARIANTS.values())
    if args.phi is not None:
        configs.append(compound_scaling(args.phi))
    for cfg in configs:
        m = measure(cfg)
        n_anchors = len(anchors_for(cfg)) if cfg.detect else 0
        rows.append({"name": cfg.name, "input_size": cfg.image_size, "params": m["params"], "flops": m["flops"],
                     "paper_flops": cfg.paper_flops, "backbone": cfg.backbone, "fpn_channels": cfg.fpn_channels,
                     "fpn_layers": cfg.fpn_layers, "head_layers": cfg.head_layers, "fusion": cfg.fusion,
                     "anchors": n_anchors, "tasks": list(cfg.tasks), "levels": [cfg.min_level, cfg.max_level],
                     "paper_params": cfg.reference_params if cfg.seg_head else None,
                     "published_weights": PUBLISHED_FILES.get(cfg.name),
                     "coco_ap": PUBLISHED_AP.get(cfg.name)})
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    print(f"{'model':<22}{'input':>6}{'params':>12}{'FLOPs':>10}{'paper':>8}  backbone")
    for r in rows:
        paper = f"{r['paper_flops'] / 1e9:.1f}B" if r["paper_flops"] else "-"
        task = "" if r["tasks"] == ["detect"] else f"  ({'+'.join(r['tasks'])}, P{r['levels'][0]}-P{r['levels'][1]})"
        print(f"{r['name']:<22}{r['input_size']:>6}{r['params']:>12,}{r['flops'] / 1e9:>9.2f}B{paper:>8}  "
              f"{r['backbone']}{task}")
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="list the model family with parameters and FLOPs",
                       description="List every variant: input size, parameters and FLOPs (multiply-adds) "
                                   "measured from the model.")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--phi", type=float, default=None, help="also show the compound-scaling row for this phi")
    p.set_defaults(func=run)
