"""What the commands share: the parser class, argument types, the model options and the detector they build."""

from __future__ import annotations

import argparse
import difflib
import sys
from pathlib import Path

from ..errors import ConfigError
from ..images import IMAGE_SUFFIXES


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors that suggest the closest valid option."""

    def error(self, message: str) -> None:  # type: ignore[override]
        if "unrecognized arguments" in message:
            options = _all_options(self)
            hints = []
            for word in message.split(":", 1)[1].split():
                if word.startswith("-"):
                    match = difflib.get_close_matches(word.split("=")[0], options, n=1, cutoff=0.6)
                    hints.append(f"{word} (did you mean {match[0]}?)" if match else word)
            if hints:
                message = "unrecognized arguments: " + " ".join(hints)
        print(f"{self.prog}: error: {message}; see '{self.prog} --help'", file=sys.stderr)
        raise SystemExit(2)


def _all_options(parser: argparse.ArgumentParser) -> list[str]:
    """Option strings of ``parser`` and of all its sub-commands."""
    options = []
    for action in parser._actions:
        options += action.option_strings
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                options += _all_options(child)
    return sorted(set(options))


def _typed(cast: type, what: str, ok, requirement: str):
    """An argparse ``type=`` that converts with ``cast`` and checks ``ok(value)`` (NaN never passes)."""

    def parse(text: str):
        try:
            value = cast(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None
        if not ok(value):
            raise argparse.ArgumentTypeError(f"{value} {requirement}")
        return value

    return parse


positive_int = _typed(int, "an integer", lambda v: v > 0, "must be a positive integer")
non_negative_int = _typed(int, "an integer", lambda v: v >= 0, "must be >= 0")
unit_float = _typed(float, "a number", lambda v: 0.0 <= v <= 1.0, "must be in [0, 1]")
positive_float = _typed(float, "a number", lambda v: v > 0, "must be > 0")
non_negative_float = _typed(float, "a number", lambda v: v >= 0, "must be >= 0")


def image_size(text: str) -> int:
    value = positive_int(text)
    if value % 128:
        # any size works, but the official geometry wants a multiple of 2**7
        print(f"warning: --image-size {value} is not a multiple of 128; anchors and features stay aligned "
              "only approximately", file=sys.stderr)
    return value


# -- predict ------------------------------------------------------------------------------------------------
def expand_sources(sources: list[str]) -> tuple[list[tuple[Path, str]], list[str], list[str]]:
    """Files, directories (recursive) and globs -> [(path, display name)], the sources that matched nothing,
    and warnings (video files inside a directory, which are not run: a folder is a set of images)."""
    import glob

    from ..video.sources import VIDEO_SUFFIXES

    found: list[tuple[Path, str]] = []
    missing: list[str] = []
    notes: list[str] = []
    for src in sources:
        path = Path(src)
        if path.is_dir():
            everything = sorted(p for p in path.rglob("*") if p.is_file())
            files = [p for p in everything if p.suffix.lower() in IMAGE_SUFFIXES]
            found += [(p, str(p.relative_to(path))) for p in files]
            videos = [str(p.relative_to(path)) for p in everything if p.suffix.lower() in VIDEO_SUFFIXES]
            if videos:
                shown = ", ".join(videos[:3]) + (", ..." if len(videos) > 3 else "")
                notes.append(f"{src}: {len(videos)} video file(s) in the folder not run ({shown}); pass videos by "
                             f"name, e.g. {Path(src) / videos[0]}")
            if not files:
                missing.append(f"{src}: directory contains no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
        elif path.is_file():
            found.append((path, path.name))
        elif any(ch in src for ch in "*?["):
            files = sorted(Path(p) for p in glob.glob(src, recursive=True) if Path(p).is_file())
            found += [(p, p.name) for p in files]
            if not files:
                missing.append(f"{src}: pattern matches no files")
        else:
            missing.append(f"{src}: no such file or directory")
    return unique_names(found), missing, notes


def unique_names(items: list[tuple[Path, str]]) -> list[tuple[Path, str]]:
    """Different files with the same display name (``a/x.png`` and ``b/x.png`` given as files) are named
    by their path below the folder they share (``a/x.png``, ``b/x.png``), so that their outputs (annotated
    copies, masks, JSON ``file_name``) do not overwrite each other. The same file twice keeps its name."""
    import os

    groups: dict[str, set[Path]] = {}
    for path, name in items:
        groups.setdefault(name, set()).add(path.resolve())
    clashes = {name: Path(os.path.commonpath([str(p.parent) for p in paths]))
               for name, paths in groups.items() if len(paths) > 1}
    if not clashes:
        return items
    return [(path, str(path.resolve().relative_to(clashes[name])) if name in clashes else name)
            for path, name in items]


def write_json(path: str | Path, obj: object) -> None:
    """``--json`` outputs: indented JSON with a final newline, parent folders created."""
    import json

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=1) + "\n")


def add_model_options(p: argparse.ArgumentParser, weights_required: bool = False) -> None:
    """``--model --weights --device --image-size --backend`` (predict, eval, serve)."""
    p.add_argument("--model", default=None,
                   help="variant name (see 'efficientdet models'); default: the one saved in --weights, else d0")
    p.add_argument("--weights", required=weights_required,
                   help="checkpoint file (this project's or effdet's), a published name, e.g. tf_efficientdet_d0, "
                        "or an exported .onnx file (run in onnxruntime)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu)")
    p.add_argument("--image-size", type=image_size, default=None, help="override the network input size")
    p.add_argument("--backend", choices=("auto", "torch", "onnxruntime", "openvino"), default="auto",
                   help="inference runtime: auto (default) = the model exported once to ONNX and cached, run in "
                        "onnxruntime, or in OpenVINO where its bf16 mode measured faster on this CPU; torch; "
                        "onnxruntime; openvino; an .onnx --weights file runs in onnxruntime or OpenVINO")
    p.add_argument("--precision", choices=("auto", "fp32", "bf16", "int8"), default="auto",
                   help="network precision: auto (default) = the fastest measured on this CPU (int8 only with "
                        "--calibration; bf16 where it measured faster, timed once and remembered); fp32; bf16 "
                        "(OpenVINO, or PyTorch with --backend torch; needs AVX512-BF16 or AMX); int8 (onnxruntime, "
                        "static quantisation with --calibration images, cached)")
    p.add_argument("--calibration", metavar="DIR", default=None,
                   help="folder of representative images for --precision int8/auto (the first 32 are used)")


def make_detector(args: argparse.Namespace, threads: int | None = None, **settings: object):
    """The :class:`~efficientdet.inference.detector.Detector` the model options describe, with the given
    post-processing settings (``None`` values take the defaults)."""
    from ..inference.detector import Detector
    from ..inference.onnxrt import is_onnx_file

    if is_onnx_file(args.weights) and args.backend == "torch":
        raise ConfigError(f"{args.weights}: an exported ONNX file runs in onnxruntime or OpenVINO; "
                          "drop --backend torch")
    if threads is not None and args.backend == "torch" and not is_onnx_file(args.weights):
        import torch  # the PyTorch runner's threads (onnxruntime's are set by ``threads``)

        torch.set_num_threads(threads)
    return Detector(args.model, weights=args.weights, device=args.device, image_size=args.image_size,
                    backend=args.backend, threads=threads, precision=args.precision, calibration=args.calibration,
                    **settings)


def add_tile_options(p: argparse.ArgumentParser) -> None:
    """``--tile SIZE --tile-overlap F`` (predict, eval): sliced inference for small objects."""
    p.add_argument("--tile", type=positive_int, default=None, metavar="SIZE",
                   help="sliced inference: run overlapping SIZE x SIZE tiles (original pixels) plus the whole "
                        "image and merge the boxes (small objects in large images)")
    p.add_argument("--tile-overlap", type=_typed(float, "a number", lambda v: 0.0 <= v < 1.0, "must be in [0, 1)"),
                   default=None, help="overlap of neighbouring tiles as a fraction of --tile (default 0.2)")


def tiled(detector, args: argparse.Namespace, max_det: int):
    """``detector`` wrapped in a :class:`~efficientdet.inference.tiling.TiledDetector` when ``--tile`` is given."""
    if args.tile is None:
        if args.tile_overlap is not None:
            raise ConfigError("--tile-overlap needs --tile SIZE")
        return detector
    from ..inference.tiling import TiledDetector

    overlap = 0.2 if args.tile_overlap is None else args.tile_overlap
    return TiledDetector(detector, tile=args.tile, overlap=overlap, max_det=max_det)
