"""Anchor matcher: hand-made cases and a cross-check against effdet 0.4.1's AnchorLabeler."""

from __future__ import annotations

import pytest
import torch

from efficientdet.box_coder import encode
from efficientdet.matcher import IGNORE, NEGATIVE, batched_iou, match_anchors, pad_targets

# Four hand-made anchors; 0 and 3 are identical (tie handling).
ANCHORS = torch.tensor(
    [[0.0, 0.0, 10.0, 10.0], [5.0, 0.0, 15.0, 10.0], [20.0, 20.0, 30.0, 30.0], [0.0, 0.0, 10.0, 10.0]]
)


def _match(boxes, labels, iscrowd=None, anchors=ANCHORS):
    crowd = None if iscrowd is None else [torch.tensor(iscrowd, dtype=torch.bool)]
    return match_anchors(
        anchors, [torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)], [torch.tensor(labels)], crowd
    )


def test_batched_iou_hand_values():
    iou = batched_iou(ANCHORS, torch.tensor([[[0.0, 0.0, 10.0, 10.0], [22.0, 22.0, 40.0, 40.0]]]))
    assert iou.shape == (1, 2, 4)
    assert iou[0, 0].tolist() == pytest.approx([1.0, 50 / 150, 0.0, 1.0])
    assert iou[0, 1].tolist() == pytest.approx([0.0, 0.0, 64 / 360, 0.0])


def test_threshold_positive_and_negative():
    res = _match([[0, 0, 10, 10]], [2])
    assert res.cls_targets.tolist() == [[2, NEGATIVE, NEGATIVE, 2]]
    assert res.num_positives.tolist() == [2]
    assert res.cls_targets.dtype == torch.int64 and res.box_targets.dtype == torch.float32
    assert res.box_targets.shape == (1, 4, 4)
    assert torch.count_nonzero(res.box_targets[0, [1, 2]]) == 0
    # A box equal to its anchor encodes to zero deltas.
    assert torch.allclose(res.box_targets[0, 0], torch.zeros(4), atol=1e-6)


def test_forced_match_below_threshold():
    # IoU 64/360 = 0.18 with anchor 2 only: still forced positive, with the encoded box target.
    res = _match([[22, 22, 40, 40]], [1])
    assert res.cls_targets.tolist() == [[NEGATIVE, NEGATIVE, 1, NEGATIVE]]
    expected = encode(torch.tensor([22.0, 22.0, 40.0, 40.0]), ANCHORS[2])
    assert torch.allclose(res.box_targets[0, 2], expected)


def test_forced_match_tie_takes_first_anchor():
    # Same IoU 1/3 with identical anchors 0 and 3: only the first one is forced.
    res = _match([[0, 0, 10, 30]], [0])
    assert res.cls_targets.tolist() == [[0, NEGATIVE, NEGATIVE, NEGATIVE]]


def test_anchor_takes_highest_iou_box_and_first_on_tie():
    # Anchor 1 [5,0,15,10]: IoU 1.0 with box 1, 0.33 with box 0 -> box 1 (label 7).
    res = _match([[0, 0, 10, 10], [5, 0, 15, 10]], [3, 7])
    assert res.cls_targets.tolist() == [[3, 7, NEGATIVE, 3]]
    # Two identical boxes: every anchor takes the first (lowest index) box.
    res = _match([[0, 0, 10, 10], [0, 0, 10, 10]], [3, 7])
    assert res.cls_targets.tolist() == [[3, NEGATIVE, NEGATIVE, 3]]


def test_forced_conflict_lowest_box_index_wins():
    # Both boxes have anchor 2 as best anchor. Box 1 overlaps it more (0.64 vs 0.5), yet box 0 is
    # forced onto it (effdet / TF behaviour), so box 1 ends with no anchor.
    anchors = ANCHORS[:3]
    res = _match([[20, 20, 25, 30], [20, 20, 28, 28]], [4, 5], anchors=anchors)
    assert batched_iou(anchors, torch.tensor([[[20.0, 20, 25, 30], [20, 20, 28, 28]]]))[0, :, 2].tolist() == (
        pytest.approx([0.5, 0.64])
    )
    assert res.cls_targets.tolist() == [[NEGATIVE, NEGATIVE, 4]]


def test_crowd_boxes_are_ignored_not_positive_nor_forced():
    # A crowd box on anchor 2 (IoU 0.18, below threshold): ignored, not forced.
    res = _match([[22, 22, 40, 40]], [1], iscrowd=[True])
    assert res.cls_targets.tolist() == [[NEGATIVE, NEGATIVE, IGNORE, NEGATIVE]]
    assert res.num_positives.tolist() == [0]
    # A normal box exactly on anchor 0/3 (IoU 1) plus a crowd box with IoU 0.5 to them: the crowd
    # overlap >= 0.5 makes anchor 3 ignored; anchor 0 stays positive because the box is forced onto it.
    res = _match([[0, 0, 10, 10], [0, 0, 10, 20]], [2, 0], iscrowd=[False, True])
    assert res.cls_targets.tolist() == [[2, NEGATIVE, NEGATIVE, IGNORE]]
    # Small anchors inside a big crowd region (best IoU tiny but > 0) are ignored; anchors with no
    # overlap stay negative.
    res = _match([[0, 0, 100, 15]], [0], iscrowd=[True])
    assert res.cls_targets.tolist() == [[IGNORE, IGNORE, NEGATIVE, IGNORE]]


def test_empty_images_give_all_negatives():
    empty = torch.zeros(0, 4)
    res = match_anchors(
        ANCHORS, [empty, torch.tensor([[0.0, 0, 10, 10]])], [torch.zeros(0), torch.tensor([1])]
    )
    assert res.cls_targets.tolist() == [[NEGATIVE] * 4, [1, NEGATIVE, NEGATIVE, 1]]
    assert res.num_positives.tolist() == [0, 2]
    assert torch.count_nonzero(res.box_targets[0]) == 0
    res = match_anchors(ANCHORS, [empty, empty], [torch.zeros(0), torch.zeros(0)])
    assert res.cls_targets.tolist() == [[NEGATIVE] * 4] * 2
    assert res.box_targets.shape == (2, 4, 4)


def test_degenerate_box_is_not_forced_onto_anchor_zero():
    res = _match([[50, 50, 50, 50]], [1])  # zero area: IoU 0 with everything
    assert res.cls_targets.tolist() == [[NEGATIVE] * 4]


def test_padded_input_and_chunking_match_list_input():
    g = torch.Generator().manual_seed(0)
    anchors = _random_boxes(300, 100.0, g)
    boxes = [_random_boxes(k, 100.0, g) for k in (3, 0, 5)]
    labels = [torch.randint(0, 4, (k,), generator=g) for k in (3, 0, 5)]
    crowd = [torch.tensor([False, True, False]), torch.zeros(0, dtype=torch.bool), torch.zeros(5).bool()]
    ref = match_anchors(anchors, boxes, labels, crowd)
    pb, pl, pc, pm = pad_targets(boxes, labels, crowd)
    assert pb.shape == (3, 5, 4) and pm.sum() == 8
    for res in (
        match_anchors(anchors, pb, pl, pc, pm),
        match_anchors(anchors, pb, pl, pc),  # mask inferred from label -1 padding
        match_anchors(anchors, boxes, labels, crowd, max_iou_elements=1),  # one image per chunk
    ):
        assert torch.equal(res.cls_targets, ref.cls_targets)
        assert torch.equal(res.box_targets, ref.box_targets)
        assert torch.equal(res.num_positives, ref.num_positives)
    assert (ref.cls_targets == IGNORE).any() and (ref.cls_targets >= 0).any()


def _random_boxes(n: int, size: float, g: torch.Generator) -> torch.Tensor:
    """n random xyxy float boxes inside [0, size]^2 with sides in [0.05, 0.6] * size."""
    wh = (0.05 + 0.55 * torch.rand(n, 2, generator=g)) * size
    xy = torch.rand(n, 2, generator=g) * (size - wh)
    return torch.cat([xy, xy + wh], dim=1)


def _effdet_targets(labeler, anchors_effdet, boxes_xyxy: list, labels0: list):
    """Run effdet's labeler (yxyx boxes, 1-based labels) and flatten its per-level outputs."""
    cls_l, box_l, num_pos = labeler.batch_label_anchors(
        [b[:, [1, 0, 3, 2]] for b in boxes_xyxy], [lab.float() + 1 for lab in labels0]
    )
    batch = len(boxes_xyxy)
    cls = torch.cat([c.reshape(batch, -1) for c in cls_l], dim=1)
    box = torch.cat([b.reshape(batch, -1, 4) for b in box_l], dim=1)[..., [1, 0, 3, 2]]  # -> (tx,ty,tw,th)
    return cls, box, num_pos


@pytest.mark.parametrize("max_level", [5, 7])
def test_matches_effdet_anchor_labeler(max_level):
    from effdet.anchors import AnchorLabeler, Anchors

    size = 128
    ref_anchors = Anchors(3, max_level, 3, [(1.0, 1.0), (1.4, 0.7), (0.7, 1.4)], 4.0, (size, size))
    labeler = AnchorLabeler(ref_anchors, num_classes=5, match_threshold=0.5)
    anchors = ref_anchors.boxes[:, [1, 0, 3, 2]].float()  # yxyx -> xyxy, identical values
    g = torch.Generator().manual_seed(max_level)
    counts = (4, 1, 7)
    boxes = [_random_boxes(k, float(size), g) for k in counts]
    boxes[1] = torch.tensor([[3.3, 5.1, 9.7, 10.2]])  # tiny box: only a forced (IoU < 0.5) match
    labels = [torch.randint(0, 5, (k,), generator=g) for k in counts]

    cls_ref, box_ref, num_pos_ref = _effdet_targets(labeler, ref_anchors, boxes, labels)
    res = match_anchors(anchors, boxes, labels)
    assert torch.equal(res.cls_targets, cls_ref.long())
    assert torch.equal(res.num_positives.float(), num_pos_ref)
    assert (res.cls_targets[1] >= 0).sum() == 1
    pos = res.cls_targets >= 0
    assert torch.allclose(res.box_targets[pos], box_ref[pos], atol=1e-5)
    assert torch.count_nonzero(res.box_targets[~pos]) == 0


def test_effdet_forced_conflict_tie_break_agrees():
    """effdet also gives a shared forced anchor to the lowest box index (see test above)."""
    from effdet.anchors import AnchorLabeler

    class _Anchors:  # the minimal interface AnchorLabeler uses
        boxes = ANCHORS[:3][:, [1, 0, 3, 2]]
        min_level = max_level = 3
        feat_sizes = {3: (1, 1)}

        @staticmethod
        def get_anchors_per_location():
            return 3

    labeler = AnchorLabeler(_Anchors(), num_classes=6)
    boxes = [torch.tensor([[20.0, 20, 25, 30], [20, 20, 28, 28]])]
    labels = [torch.tensor([4, 5])]
    cls_ref, _, _ = _effdet_targets(labeler, None, boxes, labels)
    assert cls_ref.long().tolist() == match_anchors(ANCHORS[:3], boxes, labels).cls_targets.tolist()
