"""Semantic-segmentation data: Pascal VOC layout, image/mask folder pairs and COCO JSON.

Internal form: a :class:`SegmentationData` of :class:`SegSample` (an image and where its mask comes
from). A mask is an ``(H, W)`` uint8 array of class indices at the image's original size, class 0
is the background, :data:`IGNORE_INDEX` (255) marks pixels that neither training nor evaluation
counts (VOC's object borders, COCO crowd regions, padding).

Sources (:func:`read_segmentation` tells them apart):

* a mask folder: single-channel PNGs (palette or grayscale) of class indices, each named by its
  image's stem (VOC's ``SegmentationClass/`` is such a folder);
* a VOC root: ``JPEGImages/``, ``SegmentationClass/`` and ``ImageSets/Segmentation/{train,val}.txt``
  (the split chooses the list);
* a COCO JSON: polygons and RLE rasterised with pycocotools into one map per image; category
  ``label`` (sorted by id) becomes class ``label + 1``, crowd regions become 255, later objects are
  painted over larger ones (objects in decreasing area).

Class names: ``names`` (a list or a ``labels.txt``: line i = class i, background first); otherwise a
``labels.txt`` next to the masks or in the VOC root; otherwise the 21 VOC names for a VOC root (whose
masks agree); otherwise ``background, class1, ...`` up to the largest index found. Bad masks (missing,
unreadable or not single-channel, size different from the image, values at or above the class count
other than 255) skip their image and are counted in the :class:`~.records.LoadReport` (raised at once
with ``strict``), as bad detection data is.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..errors import DataError
from .coco import coco_rle
from .common import check_dir, check_image, find_image, list_images
from .dataset import DetectionDataset
from .records import DetectionData, LoadReport, Sample
from .transforms import IGNORE_INDEX

VOC_CLASSES: tuple[str, ...] = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)  # fmt: skip


@dataclass
class SegSample:
    """One image and its mask source (a PNG file, or COCO objects rasterised on demand).

    Attributes:
        image_id: 1.. in the source's order (COCO: the file's image id).
        file_name: image path relative to the images folder.
        path: the image file.
        width, height: the image's size in pixels (after EXIF orientation), which the mask has.
        mask_path: the PNG of class indices, or None for COCO.
        objects: COCO only: ``[(class index, segmentation, iscrowd, area), ...]``.
        det: COCO only: the image's detection sample (boxes, labels, crowd flags) for joint training.
    """

    image_id: int
    file_name: str
    path: Path
    width: int
    height: int
    mask_path: Path | None = None
    objects: list[tuple[int, Any, bool, float]] | None = None
    det: Sample | None = None

    @property
    def boxes(self) -> np.ndarray:
        """The detection boxes (COCO sources), else none: :class:`SegmentationDataset` reuses the detection
        dataset's reading."""
        return self.det.boxes if self.det is not None else np.zeros((0, 4), np.float32)

    def load_mask(self) -> np.ndarray:
        """The (H, W) uint8 class-index mask at the original size."""
        if self.mask_path is not None:
            return read_mask(self.mask_path)
        return rasterize_coco(self.objects or [], self.height, self.width)


@dataclass
class SegmentationData:
    """A segmentation data set: samples, class names (background first) and what was skipped.

    ``detection``: for COCO sources, the same images as :class:`~.records.DetectionData` (same order),
    so one data set trains and evaluates a joint detection + segmentation model.
    """

    samples: list[SegSample]
    class_names: list[str]
    report: LoadReport = field(default_factory=LoadReport)
    source: str = ""
    detection: DetectionData | None = None

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


class SegmentationDataset(DetectionDataset):
    """``dataset[i] -> (image (3, S, S) float32, target)`` with ``target["mask"]``: the transform's mask
    (uint8 (S, S), 255-padded, from ``TrainTransform``; a transform that leaves the target as it is keeps
    the original (H, W) numpy mask).

    Reading, seeding and worker safety are :class:`~.dataset.DetectionDataset`'s.
    """

    def __init__(self, data: SegmentationData, transform: Any) -> None:
        super().__init__(data, transform)  # type: ignore[arg-type]

    def target(self, index: int) -> dict[str, Any]:
        s = self.samples[index]
        if s.det is not None:
            labels, iscrowd = s.det.labels, s.det.iscrowd
        else:
            labels, iscrowd = np.zeros((0,), np.int64), np.zeros((0,), bool)
        return {"boxes": s.boxes, "labels": labels, "iscrowd": iscrowd, "image_id": s.image_id,
                "mask": s.load_mask()}


def collate_segmentation(batch: list[tuple[Any, dict]]) -> tuple[Any, Any, list[dict]]:
    """``[(image, target), ...] -> (images (B, 3, S, S), masks, targets)``; ``masks`` is an int64
    (B, S, S) tensor when every mask has the same size (training), else the list of (H, W) masks."""
    import torch

    images = torch.stack([item[0] for item in batch])
    masks = [item[1]["mask"] for item in batch]
    if all(m.shape == masks[0].shape for m in masks):
        return images, torch.stack(masks).long(), [item[1] for item in batch]
    return images, masks, [item[1] for item in batch]


def read_mask(path: Path) -> np.ndarray:
    """A single-channel PNG (palette ``P`` or grayscale ``L``/``I``) as (H, W) uint8 class indices.

    Palette PNGs are read as their indices (VOC's colours are not class ids); RGB(A) masks whose three
    channels are equal are read as grayscale. Raises DataError for missing or unreadable files, colour
    images and values above 255.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(path) as im:
                im.load()
                mode = im.mode
                arr = np.asarray(im)
    except FileNotFoundError as e:
        raise DataError(f"{path}: mask file not found; add it or remove the image") from e
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        raise DataError(f"{path}: cannot read the mask ({type(e).__name__}); replace it with a PNG of class "
                        "indices") from e
    if mode in ("RGB", "RGBA") and arr.size and (arr[..., :3] == arr[..., :1]).all():
        arr, mode = arr[..., 0], "L"  # grey saved as colour (R = G = B = the class index): the same mask
    if mode not in ("P", "L", "I", "I;16", "I;16B", "I;16L", "1"):
        raise DataError(f"{path}: the mask is a {mode} image; masks must be single-channel PNGs of class "
                        "indices (palette or grayscale), not colour images")
    if mode != "1" and arr.size and int(arr.max()) > 255:
        raise DataError(f"{path}: mask value {int(arr.max())} is above 255; store class indices 0..254 "
                        "(255 = ignore)")
    return arr.astype(np.uint8)


def rasterize_coco(objects: list[tuple[int, Any, bool, float]], height: int, width: int) -> np.ndarray:
    """COCO polygons / RLE -> (H, W) uint8 map: crowd regions 255, then objects in decreasing area."""
    from pycocotools import mask as mask_utils

    out = np.zeros((height, width), np.uint8)
    order = sorted(objects, key=lambda o: (not o[2], -o[3]))  # crowd first, then large to small
    for cls, seg, crowd, _ in order:
        m = mask_utils.decode(coco_rle(seg, height, width)).astype(bool)
        out[m] = IGNORE_INDEX if crowd else cls
    return out


def load_class_names(names: list[str] | tuple[str, ...] | str | Path) -> list[str]:
    """Class names from a list or a ``labels.txt`` (one per line, line i = class i, background first)."""
    if isinstance(names, list | tuple):
        out = [str(n) for n in names]
    else:
        from .yolo import load_names

        out = load_names(names)
    if not out or len(out) > IGNORE_INDEX:
        raise DataError(f"{names}: {len(out)} class names; give 1..255 names (255 marks ignored pixels)")
    return out


def _check_mask(mask_path: Path, size: tuple[int, int], num_classes: int | None, where: str,
                report: LoadReport) -> np.ndarray | None:
    """Read and check one mask against the image size and class count; None (counted) when bad."""
    try:
        mask = read_mask(mask_path)
    except DataError as e:
        reason = "missing_mask" if not mask_path.is_file() else "unreadable_mask"
        report.add(reason, f"{where}: {e}; image skipped")
        return None
    if (mask.shape[1], mask.shape[0]) != size:
        report.add("mask_size_mismatch", f"{where}: mask {mask_path.name} is {mask.shape[1]}x{mask.shape[0]} but "
                                         f"the image is {size[0]}x{size[1]}; image skipped, fix the mask")
        return None
    if num_classes is not None:
        bad = (mask >= num_classes) & (mask != IGNORE_INDEX)
        if bad.any():
            report.add("mask_bad_values", f"{where}: mask {mask_path.name} has value {int(mask[bad].max())} but "
                                          f"there are {num_classes} classes (0..{num_classes - 1}, 255 = ignore); "
                                          "image skipped, fix the mask or the class names")
            return None
    return mask


def _pairs_to_data(pairs: list[tuple[Path, Path, str]], names: list[str] | None, voc_default: bool,
                   report: LoadReport, source: str) -> SegmentationData:
    """(image, mask, file_name) pairs -> checked samples; class count from names or the masks."""
    checked: list[tuple[Path, Path, str, tuple[int, int], int]] = []
    for image_path, mask_path, file_name in pairs:
        where = f"{source}: {file_name}"
        size = check_image(image_path, where, None, report)
        if size is None:
            continue
        mask = _check_mask(mask_path, size, len(names) if names else None, where, report)
        if mask is None:
            continue
        valid = mask[mask != IGNORE_INDEX]
        checked.append((image_path, mask_path, file_name, size, int(valid.max()) if valid.size else 0))
    if names is None:
        top = max((c[4] for c in checked), default=0)
        if voc_default and top < len(VOC_CLASSES):
            names = list(VOC_CLASSES)
        else:
            names = ["background"] + [f"class{i}" for i in range(1, top + 1)]
            if len(names) < 2:
                names.append("class1")
    samples = [SegSample(i + 1, fn, ip, s[0], s[1], mask_path=mp) for i, (ip, mp, fn, s, _) in enumerate(checked)]
    return SegmentationData(samples, names, report, source)


def read_mask_folder(images_dir: str | Path, masks_dir: str | Path, names: Any = None, strict: bool = False,
                     voc_default: bool = False) -> SegmentationData:
    """Image folder + folder of PNG masks named by the image stems (sorted by mask name).

    Masks without an image are counted (``orphan_mask``); images without a mask are counted as
    unlabelled (``no_mask``) and not used.
    """
    images_root = check_dir(images_dir, "images directory")
    masks_root = check_dir(masks_dir, "masks directory")
    report = LoadReport(strict=strict)
    class_names = load_class_names(names) if names is not None else _labels_file(masks_root)
    masks = sorted(p for p in masks_root.iterdir() if p.suffix.lower() == ".png" and p.is_file())
    if not masks:
        raise DataError(f"{masks_root}: no .png masks in this directory; pass the folder of mask PNGs")
    pairs = []
    stems = set()
    for mask_path in masks:
        image_path = find_image(images_root, mask_path.stem)
        if image_path is None:
            report.add("orphan_mask", f"{mask_path}: no image {mask_path.stem}.* in {images_root}; mask ignored")
            continue
        stems.add(mask_path.stem)
        pairs.append((image_path, mask_path, image_path.name))
    for image_path in list_images(images_root):
        if image_path.parent == images_root and image_path.stem not in stems:
            report.add("no_mask", f"{image_path}: no mask {image_path.stem}.png in {masks_root}; image not used")
    return _pairs_to_data(pairs, class_names, voc_default, report, str(masks_root))


def is_voc_root(path: str | Path) -> bool:
    p = Path(path)
    return (p / "SegmentationClass").is_dir() and (p / "ImageSets" / "Segmentation").is_dir()


def read_voc_segmentation(root: str | Path, split: str = "train", images_dir: str | Path | None = None,
                          names: Any = None, strict: bool = False) -> SegmentationData:
    """A VOC root: the ids of ``ImageSets/Segmentation/<split>.txt``, images from ``JPEGImages/`` (or
    ``images_dir``), masks from ``SegmentationClass/``."""
    root = check_dir(root, "VOC root")
    list_file = root / "ImageSets" / "Segmentation" / f"{split}.txt"
    if not list_file.is_file():
        found = sorted(p.stem for p in (root / "ImageSets" / "Segmentation").glob("*.txt"))
        raise DataError(f"{list_file}: split list not found; the VOC root has {found or 'no lists'}")
    images_root = check_dir(images_dir if images_dir is not None else root / "JPEGImages", "images directory")
    report = LoadReport(strict=strict)
    class_names = load_class_names(names) if names is not None else _labels_file(root)
    pairs = []
    for line in list_file.read_text(encoding="utf-8").splitlines():
        stem = line.strip().split(" ")[0] if line.strip() else ""
        if not stem:
            continue
        image_path = find_image(images_root, stem) or images_root / f"{stem}.jpg"
        pairs.append((image_path, root / "SegmentationClass" / f"{stem}.png", image_path.name))
    return _pairs_to_data(pairs, class_names, True, report, f"{root} ({split})")


def _coco_segmentation_problem(seg: Any, size: list[int] | None) -> str | None:
    """What is wrong with a COCO ``segmentation`` field for an image of ``size`` = [height, width]; ``None``
    when pycocotools can rasterise it (polygons: lists of >= 3 x, y number pairs; RLE: ``counts`` (a string,
    or a list of run lengths) and ``size`` equal to the image's)."""
    def number(v: Any) -> bool:
        return isinstance(v, int | float) and not isinstance(v, bool) and v == v

    if isinstance(seg, list):
        if seg and all(isinstance(p, list) and len(p) >= 6 and len(p) % 2 == 0 and all(map(number, p)) for p in seg):
            return None
        return ("'segmentation' polygons must be lists of at least 3 x, y number pairs [x1, y1, x2, y2, ...]; "
                "fix or remove them")
    if isinstance(seg, dict) and "counts" in seg and "size" in seg:
        counts, rle_size = seg["counts"], seg["size"]
        if not (isinstance(counts, str | bytes) or (isinstance(counts, list) and all(
                isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in counts))):
            return "'segmentation.counts' must be a compressed RLE string or a list of run lengths"
        if not isinstance(rle_size, list | tuple) or len(rle_size) != 2:
            return f"'segmentation.size' is {rle_size!r}; it must be the image's [height, width]"
        if size is not None and list(rle_size) != list(size):
            return (f"'segmentation.size' is {list(rle_size)} but the image is [height, width] = {size}; "
                    "encode the RLE at the image's size")
        if isinstance(counts, list) and size is not None and sum(counts) != size[0] * size[1]:
            return (f"'segmentation.counts' run lengths sum to {sum(counts)}, not height x width = "
                    f"{size[0] * size[1]}; re-encode the mask")
        return None
    return "no usable 'segmentation' (polygons or RLE)"


def read_coco_segmentation(images_dir: str | Path, annotation_file: str | Path, strict: bool = False,
                           names: Any = None) -> SegmentationData:
    """COCO instances JSON -> semantic maps (class = category label + 1, crowd = 255)."""
    from .coco import load_json, read_coco

    det = read_coco(images_dir, annotation_file, strict=strict)  # image checks and category order
    doc = load_json(annotation_file)
    label_of = {cid: i for i, cid in enumerate(det.category_ids)}
    by_image: dict[int, list] = {}
    sizes = {s.image_id: [s.height, s.width] for s in det.samples}
    report = det.report
    for i, ann in enumerate(doc.get("annotations") or []):
        if not isinstance(ann, dict) or ann.get("category_id") not in label_of:
            continue  # counted by read_coco
        seg = ann.get("segmentation")
        where = f"{annotation_file} annotation id {ann.get('id', i)}"
        problem = _coco_segmentation_problem(seg, sizes.get(ann.get("image_id")))
        if problem:
            report.add("no_segmentation", f"{where}: {problem}; object not painted")
            continue
        area = ann.get("area")
        by_image.setdefault(ann.get("image_id"), []).append(
            (label_of[ann["category_id"]] + 1, seg, bool(ann.get("iscrowd", 0)),
             float(area) if isinstance(area, int | float) else 0.0))
    class_names = load_class_names(names) if names is not None else ["background"] + list(det.class_names)
    if len(class_names) != det.num_classes + 1:
        raise DataError(f"{annotation_file}: {det.num_classes} categories need {det.num_classes + 1} class names "
                        f"(background first), got {len(class_names)}")
    samples = [SegSample(s.image_id, s.file_name, s.path, s.width, s.height, objects=by_image.get(s.image_id, []),
                         det=s) for s in det.samples]
    return SegmentationData(samples, class_names, report, str(annotation_file), detection=det)


def _labels_file(folder: Path) -> list[str] | None:
    for candidate in (folder / "labels.txt", folder.parent / "labels.txt"):
        if candidate.is_file():
            return load_class_names(candidate)
    return None


def read_segmentation(images: str | Path | None, annotations: str | Path, names: Any = None,
                      split: str = "train", strict: bool = False) -> SegmentationData:
    """Any segmentation source (see the module docstring): a ``.json`` file is COCO, a VOC root (with
    ``SegmentationClass/`` and ``ImageSets/Segmentation/``) uses ``split``, any other folder holds the
    masks for ``images``.
    """
    ann = Path(annotations)
    if ann.is_file():
        if ann.suffix.lower() != ".json":
            raise DataError(f"{ann}: segmentation annotations are a folder of PNG masks, a VOC root or a COCO "
                            ".json file")
        if images is None:
            raise DataError(f"{ann}: COCO annotations need the images folder (--images / --train-images)")
        return read_coco_segmentation(images, ann, strict=strict, names=names)
    if is_voc_root(ann):
        return read_voc_segmentation(ann, split, images, names=names, strict=strict)
    if not ann.exists():
        raise DataError(f"{ann}: annotations not found; pass a folder of PNG masks, a VOC root or a COCO .json")
    if images is None:
        raise DataError(f"{ann}: a mask folder needs the images folder (--images / --train-images)")
    voc_like = ann.name == "SegmentationClass"
    return read_mask_folder(images, ann, names=names, strict=strict, voc_default=voc_like)


__all__ = [
    "IGNORE_INDEX", "VOC_CLASSES", "SegSample", "SegmentationData", "SegmentationDataset", "collate_segmentation",
    "load_class_names",
    "rasterize_coco", "read_coco_segmentation", "read_mask", "read_mask_folder", "read_segmentation",
    "read_voc_segmentation",
]  # fmt: skip
