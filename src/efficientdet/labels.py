"""``LabelMap``: what each 0-based class index of a model means (torch-free).

Inside the library labels are 0-based contiguous indices; a data set's own category ids (COCO ids,
for example) and names are kept here and applied only at the edges (``predict --json``, ``eval``,
exports). A slot whose name is ``None`` is *ignored*: the published COCO weights have 90 class slots
of which 10 are unused, and detections of those slots are never reported.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from .errors import WeightsError


@dataclass(frozen=True)
class LabelMap:
    """Names and original category ids of a model's classes, one entry per class index.

    Attributes:
        names: class name per index; ``None`` marks an ignored (unused) slot.
        category_ids: the data set's id per index (written to COCO results files).
    """

    names: tuple[str | None, ...]
    category_ids: tuple[int, ...]

    def __post_init__(self) -> None:
        if len(self.names) != len(self.category_ids):
            raise WeightsError(f"{len(self.names)} class names / {len(self.category_ids)} category ids; "
                               "give one per class")

    @classmethod
    def default(cls, num_classes: int) -> LabelMap:
        """``class0`` ... with ids 1..n (a model trained without names)."""
        return cls(tuple(f"class{i}" for i in range(num_classes)), tuple(range(1, num_classes + 1)))

    @classmethod
    def create(cls, names: Sequence[str | None] | None, category_ids: Sequence[int] | None,
               num_classes: int) -> LabelMap:
        """A map of ``num_classes`` entries; missing names or ids take the defaults."""
        default = cls.default(num_classes)
        return cls(tuple(names) if names is not None else default.names,
                   tuple(int(i) for i in category_ids) if category_ids is not None else default.category_ids)

    def __len__(self) -> int:
        return len(self.names)

    @property
    def display_names(self) -> list[str]:
        """Names with ignored slots shown as ``classN``."""
        return [n if n is not None else f"class{i}" for i, n in enumerate(self.names)]

    @property
    def ignored(self) -> list[bool]:
        """True for each ignored slot."""
        return [n is None for n in self.names]

    def keep_mask(self) -> list[bool] | None:
        """Per-class "may be reported" flags, or ``None`` when every class may be."""
        ignored = self.ignored
        return [not i for i in ignored] if any(ignored) else None

    def to_dict(self) -> dict[str, list]:
        """``{"class_names": [...], "category_ids": [...]}`` as checkpoints and exports store it."""
        return {"class_names": list(self.names), "category_ids": [int(i) for i in self.category_ids]}
