"""COCO box evaluation (AP / AR) with pycocotools or faster-coco-eval.

Ground truth is a COCO instances dict or JSON file; boxes are COCO ``[x, y, w, h]`` in original-image
pixels. Detections are COCO results: ``{"image_id", "category_id", "bbox": [x, y, w, h], "score"}``.

The ground truth is tidied before evaluation (on a copy): a missing ``area`` becomes ``w * h``, a
missing ``iscrowd`` becomes 0, missing or duplicate annotation ids are renumbered, missing
``categories`` are derived from the annotations, and ``info`` / ``licenses`` are not needed. Both
backends are driven through the same COCO/COCOeval API, with the result set built here (so an empty
detection list works: pycocotools' ``loadRes`` crashes on it).
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import numbers
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from efficientdet.errors import ConfigError, DataError, closest

logger = logging.getLogger(__name__)

METRIC_NAMES: tuple[str, ...] = (
    "AP",
    "AP50",
    "AP75",
    "APs",
    "APm",
    "APl",
    "AR1",
    "AR10",
    "AR100",
    "ARs",
    "ARm",
    "ARl",
)
METRIC_DESCRIPTIONS: dict[str, str] = {
    "AP": "AP  @[IoU=0.50:0.95 | area=   all | maxDets=100]",
    "AP50": "AP  @[IoU=0.50      | area=   all | maxDets=100]",
    "AP75": "AP  @[IoU=0.75      | area=   all | maxDets=100]",
    "APs": "AP  @[IoU=0.50:0.95 | area= small | maxDets=100]",
    "APm": "AP  @[IoU=0.50:0.95 | area=medium | maxDets=100]",
    "APl": "AP  @[IoU=0.50:0.95 | area= large | maxDets=100]",
    "AR1": "AR  @[IoU=0.50:0.95 | area=   all | maxDets=  1]",
    "AR10": "AR  @[IoU=0.50:0.95 | area=   all | maxDets= 10]",
    "AR100": "AR  @[IoU=0.50:0.95 | area=   all | maxDets=100]",
    "ARs": "AR  @[IoU=0.50:0.95 | area= small | maxDets=100]",
    "ARm": "AR  @[IoU=0.50:0.95 | area=medium | maxDets=100]",
    "ARl": "AR  @[IoU=0.50:0.95 | area= large | maxDets=100]",
}
BACKENDS = ("pycocotools", "faster-coco-eval")


class Predictions(list):
    """A list of COCO result dicts, plus what :func:`load_predictions` could not match.

    ``num_unmatched``: records whose ``file_name`` matched no ground-truth image (dropped);
    ``unmatched_file_names``: up to 10 of those names, for messages.
    """

    num_unmatched: int = 0
    unmatched_file_names: list[str]

    def __init__(self, items: Iterable[dict] = (), num_unmatched: int = 0, unmatched: Sequence[str] = ()):
        super().__init__(items)
        self.num_unmatched = num_unmatched
        self.unmatched_file_names = list(unmatched)[:10]


# ----------------------------------------------------------------------------------------------
# Reading and checking inputs
# ----------------------------------------------------------------------------------------------


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _finite_number(value: Any) -> bool:
    return _is_number(value) and math.isfinite(float(value))


def _read_json(path: Path, what: str, fix: str) -> Any:
    """Read a JSON file (or, failing that, JSON Lines) with one-line DataErrors."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataError(f"{path}: {what} file not found; {fix}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read {what} file ({exc}); {fix}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        lines = [line for line in text.splitlines() if line.strip()]
        if len(lines) > 1:  # JSON Lines: one record per line
            try:
                return [json.loads(line) for line in lines]
            except json.JSONDecodeError:
                pass
        raise DataError(
            f"{path}: not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg}); {fix}"
        ) from None


def _bbox_ok(bbox: Any) -> bool:
    return isinstance(bbox, (list, tuple)) and len(bbox) == 4 and all(_finite_number(v) for v in bbox)


def load_ground_truth(ground_truth: dict | str | os.PathLike) -> tuple[dict, str]:
    """Load and tidy a COCO instances dataset; returns ``(dataset copy, source name for messages)``.

    Raises :class:`DataError` for a missing/unreadable file or malformed images/annotations.
    """
    if isinstance(ground_truth, dict):
        source, data = "<ground truth>", ground_truth
    else:
        source = str(ground_truth)
        data = _read_json(
            Path(ground_truth),
            "annotation",
            "pass a COCO instances JSON file (images, annotations, categories)",
        )
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise DataError(
            f"{source}: not a COCO annotation file (expected a JSON object with an 'images' list); "
            "pass a COCO instances JSON file"
        )
    images = []
    for i, img in enumerate(data["images"]):
        if not isinstance(img, dict) or "id" not in img:
            raise DataError(f"{source}: images[{i}] has no 'id'; give every image a unique integer 'id'")
        images.append(dict(img))
    raw_anns = data.get("annotations") or []
    if not isinstance(raw_anns, list):
        raise DataError(f"{source}: 'annotations' is not a list; make it a list of annotation objects")
    anns = []
    for i, ann in enumerate(raw_anns):
        if not isinstance(ann, dict):
            raise DataError(
                f"{source}: annotations[{i}] is not an object; each annotation must be a JSON object"
            )
        for key in ("image_id", "category_id", "bbox"):
            if key not in ann:
                raise DataError(f"{source}: annotations[{i}] has no {key!r}; add it (bbox is [x, y, w, h])")
        if not _bbox_ok(ann["bbox"]):
            raise DataError(
                f"{source}: annotations[{i}] bbox {_short(ann['bbox'])} is not 4 finite numbers; "
                "write it as [x, y, width, height] in pixels"
            )
        out = dict(ann)
        out["bbox"] = [float(v) for v in ann["bbox"]]
        if not _finite_number(out.get("area")):
            out["area"] = out["bbox"][2] * out["bbox"][3]
        out["iscrowd"] = int(bool(out.get("iscrowd", 0)))
        anns.append(out)
    ids = [a.get("id") for a in anns]
    if any(i is None for i in ids) or len(set(ids)) != len(ids):
        for k, a in enumerate(anns):
            a["id"] = k + 1
    categories = data.get("categories")
    if categories:
        if not isinstance(categories, list) or not all(isinstance(c, dict) and "id" in c for c in categories):
            raise DataError(f"{source}: 'categories' must be a list of objects with an 'id'; fix the file")
        categories = [dict(c) for c in categories]
    else:
        categories = [{"id": c} for c in sorted({a["category_id"] for a in anns})]
    return {"images": images, "annotations": anns, "categories": categories}, source


def _check_record(rec: Any, index: int, source: str, need_image_id: bool = True) -> dict:
    """Validate one detection record and return a clean copy (float bbox/score, int category_id)."""
    fix = "each record needs bbox [x, y, w, h], score and category_id (and image_id or file_name)"
    if not isinstance(rec, dict):
        raise DataError(f"{source}: record {index} is not a JSON object ({_short(rec)}); {fix}")
    for key in ("bbox", "score", "category_id"):
        if key not in rec:
            raise DataError(f"{source}: record {index} has no {key!r}; {fix}")
    if need_image_id and "image_id" not in rec:
        raise DataError(f"{source}: record {index} has no 'image_id'; {fix}")
    if not _bbox_ok(rec["bbox"]):
        raise DataError(
            f"{source}: record {index} bbox {_short(rec['bbox'])} is not 4 finite numbers; "
            "write boxes as [x, y, width, height] in original-image pixels"
        )
    if not _finite_number(rec["score"]):
        raise DataError(
            f"{source}: record {index} score {_short(rec['score'])} is not a finite number; {fix}"
        )
    cat = rec["category_id"]
    if not _is_number(cat) or float(cat) != int(cat):
        raise DataError(f"{source}: record {index} category_id {_short(cat)} is not an integer; {fix}")
    out = {"bbox": [float(v) for v in rec["bbox"]], "score": float(rec["score"]), "category_id": int(cat)}
    if "image_id" in rec:
        image_id = rec["image_id"]
        out["image_id"] = int(image_id) if isinstance(image_id, numbers.Integral) else image_id
    return out


def _norm_path(name: str) -> str:
    name = name.replace("\\", "/")
    while name.startswith("./"):
        name = name[2:]
    return name


def read_results(path: str | os.PathLike) -> Any:
    """The records of a results file (JSON or JSON Lines), unchecked; one-line DataErrors. The
    ``{"detections": [...], "segmentation": [...]}`` that ``predict --json`` writes for a joint model
    gives its detections."""
    data = _read_json(Path(path), "predictions", "pass a COCO results JSON file (a list of detections)")
    if isinstance(data, dict) and isinstance(data.get("detections"), list) and "segmentation" in data:
        return data["detections"]
    return data


def load_predictions(
    path: str | os.PathLike | list[dict], ground_truth: dict | str | os.PathLike | None = None,
    source: str | None = None,
) -> Predictions:
    """Read detections from a COCO results JSON file (a list of records) or this project's predictions.

    Records carry ``image_id``, or instead ``file_name`` (``predict --json`` output:
    ``{"file_name", "bbox", "score", "category_id", "category_name"}``), which is matched to a
    ground-truth image by its ``file_name``: the exact relative path, else the predicted path's
    trailing components, else the basename (when unique in the ground truth). ``bbox`` is
    ``[x, y, w, h]`` in original-image pixels. JSON Lines files are accepted too, and the
    ``{"detections": [...], "segmentation": [...]}`` that ``predict --json`` writes for a joint model.

    Returns a :class:`Predictions` list of ``{"image_id", "category_id", "bbox", "score"}``; records
    whose file name matched no image are dropped and counted (``num_unmatched``, with a warning).
    Raises :class:`DataError` (one line: file, record index, problem, fix) for a malformed file, and
    when no file name at all matches (wrong annotation file).
    """
    if isinstance(path, list):  # records already read (``source``: the file they came from, for messages)
        source, data = source or "<predictions>", path
    else:
        source, data = str(path), read_results(path)
    if isinstance(data, dict) and isinstance(data.get("annotations"), list) and "images" in data:
        raise DataError(
            f"{source}: this is a ground-truth annotation file, not detections; "
            "pass a COCO results file (a JSON list of detections)"
        )
    if not isinstance(data, list):
        raise DataError(
            f"{source}: expected a JSON list of detections, got {type(data).__name__}; "
            "pass a COCO results file ([{image_id, category_id, bbox, score}, ...])"
        )
    lookup: dict[str, Any] | None = None
    basenames: dict[str, Any] = {}
    out: list[dict] = []
    unmatched: list[str] = []
    num_unmatched = 0
    for i, rec in enumerate(data):
        clean = _check_record(rec, i, source, need_image_id=False)
        if "image_id" in clean:
            out.append(clean)
            continue
        file_name = rec.get("file_name")
        if not isinstance(file_name, str) or not file_name:
            raise DataError(
                f"{source}: record {i} has neither 'image_id' nor 'file_name'; "
                "add the COCO image id or the image's file name to every record"
            )
        if lookup is None:
            if ground_truth is None:
                raise DataError(
                    f"{source}: record {i} identifies its image by file_name; "
                    "pass the ground-truth annotation file so names can be matched to image ids"
                )
            gt, _ = load_ground_truth(ground_truth)
            lookup = {}
            seen: dict[str, list] = {}
            for img in gt["images"]:
                name = img.get("file_name")
                if isinstance(name, str) and name:
                    lookup.setdefault(_norm_path(name), img["id"])
                    seen.setdefault(name.replace("\\", "/").rsplit("/", 1)[-1], []).append(img["id"])
            basenames = {k: v[0] for k, v in seen.items() if len(v) == 1}
        image_id = _match_file_name(_norm_path(file_name), lookup, basenames)
        if image_id is None:
            num_unmatched += 1
            if len(unmatched) < 10:
                unmatched.append(file_name)
            continue
        clean["image_id"] = image_id
        out.append(clean)
    if num_unmatched:
        if not out:
            raise DataError(
                f"{source}: none of the {num_unmatched} detection file names match an image in the "
                f"ground truth (e.g. {unmatched[0]!r}); "
                "pass the annotation file these predictions were made on"
            )
        logger.warning(
            "%s: %d detection(s) name images not in the ground truth and were skipped (e.g. %r)",
            source,
            num_unmatched,
            unmatched[0],
        )
    return Predictions(out, num_unmatched, unmatched)


def _match_file_name(name: str, lookup: dict[str, Any], basenames: dict[str, Any]) -> Any:
    """Exact relative path, else the longest trailing sub-path found in the GT, else a unique basename."""
    parts = [p for p in name.split("/") if p]
    for k in range(len(parts)):
        candidate = "/".join(parts[k:])
        if candidate in lookup:
            return lookup[candidate]
    return basenames.get(parts[-1]) if parts else None


# ----------------------------------------------------------------------------------------------
# Evaluation
# ----------------------------------------------------------------------------------------------


def _backend_classes(backend: str) -> tuple[type, type]:
    key = backend.lower().replace("_", "-")
    try:
        if key == "pycocotools":
            from pycocotools.coco import COCO
            from pycocotools.cocoeval import COCOeval

            return COCO, COCOeval
        if key == "faster-coco-eval":
            from faster_coco_eval import COCO, COCOeval_faster

            return COCO, COCOeval_faster
    except ImportError:
        raise ConfigError(
            f"COCO evaluation backend {backend!r} is not installed; "
            f"pip install {key} or choose another backend"
        ) from None
    raise ConfigError(
        f"unknown COCO evaluation backend {backend!r}{closest(key, list(BACKENDS))}; "
        f"choose one of {', '.join(BACKENDS)}"
    )


def _make_coco(coco_cls: type, dataset: dict) -> Any:
    coco = coco_cls()
    coco.dataset = dataset
    coco.createIndex()
    return coco


def _per_class(precision: np.ndarray, cat_ids: list, names: dict, iou_index: int | None) -> dict:
    """Per-class AP from COCOeval's precision (T, R, K, A, M) at area 'all', maxDets 100.

    ``iou_index`` None averages over all IoU thresholds; -1 where a class has no ground truth.
    """
    out: dict = {}
    for k, cat_id in enumerate(cat_ids):
        cat_id = int(cat_id) if isinstance(cat_id, numbers.Integral) else cat_id
        p = precision[:, :, k, 0, -1] if iou_index is None else precision[iou_index, :, k, 0, -1]
        p = p[p > -1]
        key = names.get(cat_id, cat_id)
        if key in out:  # duplicate class names: keep both, told apart by id
            key = f"{key} (id {cat_id})"
        out[key] = float(np.mean(p)) if p.size else -1.0
    return out


def evaluate_detections(
    ground_truth: dict | str | os.PathLike,
    detections: list[dict],
    class_names: dict[int, str] | None = None,
    backend: str = "pycocotools",
    quiet: bool = True,
    return_precision: bool = False,
) -> dict:
    """COCO bbox evaluation of ``detections`` against ``ground_truth``.

    Args:
        ground_truth: COCO instances dict or path to its JSON (boxes ``[x, y, w, h]`` in pixels).
        detections: COCO results ``{"image_id", "category_id", "bbox": [x, y, w, h], "score"}`` (the
            output of :func:`load_predictions` or of the model's post-processing).
        class_names: category id -> name for the ``per_class`` keys (default: the GT category names).
        backend: ``"pycocotools"`` or ``"faster-coco-eval"``; both give the same numbers.
        quiet: suppress the backend's progress and summary prints.
        return_precision: also return ``precision_iou50`` (101 recall points x K classes, COCOeval's
            precision at IoU 0.5, area 'all', 100 detections; -1 where undefined) and ``category_ids``
            (its K columns), for precision-recall plots.

    Returns:
        Plain floats ``AP, AP50, AP75, APs, APm, APl, AR1, AR10, AR100, ARs, ARm, ARl`` (COCOeval's 12
        stats, in [0, 1], -1 when undefined e.g. no GT in an area range), ``per_class`` and
        ``per_class_AP50`` ({name or id: AP}, -1 for classes without GT), ``num_images`` (GT images),
        ``num_detections`` (evaluated), ``num_skipped_detections`` (image id not in the GT, dropped),
        ``num_unknown_category_detections`` (category id not in the GT, dropped), ``backend``, and
        for a :class:`Predictions` input ``num_unmatched_file_names`` (dropped by the loader).
    """
    coco_cls, eval_cls = _backend_classes(backend)
    gt, _ = load_ground_truth(ground_truth)
    image_ids = {img["id"] for img in gt["images"]}
    cat_ids = {c["id"] for c in gt["categories"]}
    dets: list[dict] = []
    skipped = unknown_cat = 0
    for i, rec in enumerate(detections):
        clean = _check_record(rec, i, "<detections>")
        if clean["image_id"] not in image_ids:
            skipped += 1
            continue
        if clean["category_id"] not in cat_ids:
            unknown_cat += 1
            continue
        x, y, w, h = clean["bbox"]
        clean.update(id=len(dets) + 1, area=w * h, iscrowd=0)
        dets.append(clean)
    if skipped:
        logger.warning("%d detection(s) for image ids not in the ground truth were skipped", skipped)
    if unknown_cat:
        logger.warning("%d detection(s) with category ids not in the ground truth were skipped", unknown_cat)

    sink = io.StringIO()
    with contextlib.redirect_stdout(sink) if quiet else contextlib.nullcontext():
        coco_gt = _make_coco(coco_cls, gt)
        result_set = {"images": gt["images"], "categories": gt["categories"], "annotations": dets}
        coco_dt = _make_coco(coco_cls, result_set)
        kwargs = {} if quiet or coco_cls.__module__.startswith("pycocotools") else {"print_function": print}
        evaluator = eval_cls(coco_gt, coco_dt, "bbox", **kwargs)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    stats = [float(v) for v in np.asarray(evaluator.stats).reshape(-1)[: len(METRIC_NAMES)]]
    names = {c["id"]: c.get("name", c["id"]) for c in gt["categories"]}
    if class_names:
        names.update(class_names)
    eval_cat_ids = list(evaluator.params.catIds)
    precision = np.asarray(evaluator.eval["precision"])
    metrics: dict[str, Any] = dict(zip(METRIC_NAMES, stats))
    metrics["per_class"] = _per_class(precision, eval_cat_ids, names, None)
    metrics["per_class_AP50"] = _per_class(precision, eval_cat_ids, names, 0)
    metrics.update(
        num_images=len(gt["images"]),
        num_detections=len(dets),
        num_skipped_detections=skipped,
        num_unknown_category_detections=unknown_cat,
        backend=backend,
    )
    if isinstance(detections, Predictions):
        metrics["num_unmatched_file_names"] = detections.num_unmatched
    if return_precision:
        metrics["precision_iou50"] = precision[0, :, :, 0, -1]
        metrics["category_ids"] = eval_cat_ids
    return metrics


def format_metrics(metrics: dict) -> str:
    """A readable table of the 12 COCO metrics and the per-class AP / AP50 (``-`` where undefined)."""

    def cell(value: Any) -> str:
        return "-" if value is None or float(value) < 0 else f"{float(value):.3f}"

    lines = [f"{'metric':<6} {'':<48} {'value':>6}"]
    for key in METRIC_NAMES:
        if key in metrics:
            lines.append(f"{key:<6} {METRIC_DESCRIPTIONS[key]:<48} {cell(metrics[key]):>6}")
    per_class = metrics.get("per_class") or {}
    if per_class:
        ap50 = metrics.get("per_class_AP50") or {}
        width = max(10, *(len(str(k)) for k in per_class))
        lines += ["", f"{'class':<{width}} {'AP':>6} {'AP50':>6}"]
        for name, ap in per_class.items():
            lines.append(f"{str(name):<{width}} {cell(ap):>6} {cell(ap50.get(name)):>6}")
    counts = [
        f"{metrics[k]} {label}"
        for k, label in (
            ("num_images", "images"),
            ("num_detections", "detections"),
            ("num_skipped_detections", "skipped (unknown image)"),
            ("num_unknown_category_detections", "skipped (unknown category)"),
            ("num_unmatched_file_names", "skipped (unmatched file name)"),
        )
        if metrics.get(k)
    ]
    if counts:
        lines += ["", ", ".join(counts)]
    return "\n".join(lines)
