"""Reading and writing the files of dense-prediction datasets, with clear errors on bad input.

Every reader in :mod:`predec.data.datasets` goes through these functions, so a broken file always raises a
:class:`DataError` that names the file and the problem (never a silent wrong sample):

- :func:`read_image`: RGB uint8 (H, W, 3); unreadable or truncated files and 16/32-bit images are refused.
- :func:`read_label`: class-index PNG (palette ``P`` or grayscale ``L``) as uint8 (H, W).
- :func:`check_labels`: values must be class ids ``0..num_classes-1`` or the ignore index 255.
- :func:`read_depth`: 16-bit PNG → float32 metres (``value * scale``, 0 = invalid); 8-bit PNGs are rejected.
- :func:`check_same_size`: image and label/depth must have the same height and width.
- :func:`check_depth_range`: most valid depths of a sample must lie in the model's range (a wrong unit is named).
- :func:`read_split_file`: whitespace-separated columns per line, ``#`` comments and blank lines skipped.

The writers (:func:`write_image`, :func:`write_label`, :func:`write_depth`) produce the same formats, losslessly.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from predec.data.sample import IGNORE_INDEX

IMAGE_EXTENSIONS: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
"""File extensions (lower case) that count as images in folder readers."""

_PNG_COMPRESS_LEVEL = 1  # zlib level of written PNGs: lossless either way, ~1.5x faster than 6, ~15% larger
_DEPTH_PNG_MODES = ("I;16", "I;16B", "I;16L", "I")  # how Pillow opens 16-bit grayscale PNGs


class DataError(ValueError):
    """A dataset file or layout is unusable; the message names the file and the problem."""


def _open_loaded(path: Path) -> Image.Image:
    """Open and fully decode an image file, turning every decoder failure into a :class:`DataError`."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        image = Image.open(path)
        image.load()  # decode now, so that truncated files fail here and not later
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise DataError(f"{path}: unreadable or truncated image ({err})") from err
    return image


def read_image(path: str | Path) -> np.ndarray:
    """Read an image as RGB.

    Args:
        path: any format Pillow reads (JPEG, PNG, BMP, WebP, ...); grayscale and palette images are converted.

    Returns:
        uint8 array (H, W, 3).

    Raises:
        DataError: the file is missing, unreadable or truncated, or holds 16/32-bit integer or float values
            (e.g. a depth map), which Pillow would clip to 0..255 (a 16-bit depth PNG turns almost white).
    """
    image = _open_loaded(Path(path))
    if image.mode.startswith(("I", "F")):  # I, I;16, I;16B, I;16L, F
        raise DataError(
            f"{path}: image has mode {image.mode!r} (16/32-bit grayscale, e.g. a depth map); expected an 8-bit "
            "image (RGB, RGBA, grayscale, palette): read as RGB its values would be clipped to 0..255. Convert it "
            "to 8 bits, or remove it if it is not a photo."
        )
    if image.mode != "RGB":
        image = image.convert("RGB")
    return np.array(image, dtype=np.uint8)  # a writable copy


def read_label(path: str | Path) -> np.ndarray:
    """Read a class-index label PNG (palette ``P`` mode, read as indices, or 8-bit grayscale ``L``).

    Args:
        path: the label file.

    Returns:
        uint8 array (H, W) of raw class ids (no range check: see :func:`check_labels`).

    Raises:
        DataError: missing or unreadable file, or a colour (RGB) / 16-bit image where class indices are expected.
    """
    path = Path(path)
    image = _open_loaded(path)
    if image.mode not in ("P", "L"):
        raise DataError(
            f"{path}: label image has mode {image.mode!r}; expected class indices in a palette ('P') or 8-bit "
            "grayscale ('L') PNG (a colour-coded RGB label must be converted to indices first)"
        )
    return np.array(image, dtype=np.uint8)  # a writable copy


def check_labels(labels: np.ndarray, num_classes: int, path: str | Path) -> np.ndarray:
    """Check that every label value is a class id in ``[0, num_classes)`` or the ignore index 255.

    Args:
        labels: class ids (H, W), after any dataset-specific conversion.
        num_classes: number of classes of the dataset.
        path: the file the labels came from (for the error message).

    Returns:
        ``labels``, unchanged.

    Raises:
        DataError: with the offending values and the valid range.
    """
    values = np.unique(labels)
    bad = values[(values >= num_classes) & (values != IGNORE_INDEX)]
    if bad.size:
        shown = ", ".join(str(int(v)) for v in bad[:10]) + (", ..." if bad.size > 10 else "")
        raise DataError(
            f"{path}: label values {shown} are outside the class range 0..{num_classes - 1} "
            f"and not the ignore index {IGNORE_INDEX}"
        )
    return labels


def read_depth(path: str | Path, scale: float) -> np.ndarray:
    """Read a 16-bit depth PNG as metres.

    Args:
        path: 16-bit grayscale PNG; 0 = no measurement.
        scale: metres per unit (1/1000 for NYU-Depth-v2, 1/256 for KITTI).

    Returns:
        float32 array (H, W) in metres, 0 where invalid.

    Raises:
        DataError: missing/unreadable file or a PNG that is not 16-bit (e.g. an 8-bit visualisation).
    """
    path = Path(path)
    image = _open_loaded(path)
    if image.mode not in _DEPTH_PNG_MODES:
        bits = {"1": "1-bit", "L": "8-bit", "P": "8-bit palette", "RGB": "8-bit RGB", "RGBA": "8-bit RGBA"}
        kind = bits.get(image.mode, f"mode {image.mode!r}")
        raise DataError(
            f"{path}: depth PNG is {kind}; expected a 16-bit grayscale PNG holding depth / {scale:g} m "
            "(an 8-bit depth image is a visualisation and cannot be converted to metres)"
        )
    return np.asarray(image).astype(np.float32) * np.float32(scale)


def check_same_size(image: np.ndarray, other: np.ndarray, image_path: str | Path, other_path: str | Path) -> None:
    """Raise a :class:`DataError` unless ``image`` (H, W, ...) and ``other`` (H, W) have the same H and W."""
    if image.shape[:2] != other.shape[:2]:
        raise DataError(
            f"{other_path}: size {other.shape[1]}x{other.shape[0]} (WxH) differs from its image {image_path} "
            f"({image.shape[1]}x{image.shape[0]}); image and annotation must have the same size"
        )


def read_split_file(path: str | Path, num_columns: int | Sequence[int]) -> list[tuple[int, list[str]]]:
    """Read a split file: one item per line, whitespace-separated columns.

    Args:
        path: the split file.
        num_columns: the allowed column count(s).

    Returns:
        ``(line_number, columns)`` for every non-blank line that is not a ``#`` comment (1-based line numbers).

    Raises:
        DataError: the file is missing, empty, or a line has the wrong number of columns.
    """
    path = Path(path)
    allowed = (num_columns,) if isinstance(num_columns, int) else tuple(num_columns)
    if not path.is_file():
        raise DataError(f"{path}: split file not found")
    entries = []
    for line_number, line in enumerate(path.read_text().splitlines(), start=1):
        columns = line.split()
        if not columns or columns[0].startswith("#"):
            continue
        if len(columns) not in allowed:
            expected = " or ".join(str(n) for n in allowed)
            raise DataError(f"{path}, line {line_number}: {len(columns)} columns, expected {expected}: {line!r}")
        entries.append((line_number, columns))
    if not entries:
        raise DataError(f"{path}: split file lists no samples")
    return entries


def voc_palette(num_colors: int = 256) -> np.ndarray:
    """The Pascal VOC colour map (index 0 black, 255 = (224, 224, 192)) as uint8 (num_colors, 3)."""
    palette = np.zeros((num_colors, 3), dtype=np.uint8)
    for index in range(num_colors):
        value, red, green, blue = index, 0, 0, 0
        for bit in range(8):
            red |= ((value >> 0) & 1) << (7 - bit)
            green |= ((value >> 1) & 1) << (7 - bit)
            blue |= ((value >> 2) & 1) << (7 - bit)
            value >>= 3
        palette[index] = (red, green, blue)
    return palette


@functools.cache
def _voc_palette_list() -> list[int]:
    return voc_palette().reshape(-1).tolist()


def write_image(path: str | Path, image: np.ndarray) -> None:
    """Write an RGB uint8 (H, W, 3) image; the format follows the suffix (use ``.png`` for a lossless copy)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image = np.ascontiguousarray(image, dtype=np.uint8)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"{path}: expected an RGB image (H, W, 3), got shape {image.shape}")
    Image.fromarray(image).save(path, compress_level=_PNG_COMPRESS_LEVEL)  # other formats ignore the option


def write_label(path: str | Path, labels: np.ndarray) -> None:
    """Write class ids (H, W) in 0..255 as a palette PNG with the VOC colour map (read back as indices)."""
    path = Path(path)
    labels = np.asarray(labels)
    if labels.min(initial=0) < 0 or labels.max(initial=0) > 255:
        raise ValueError(f"{path}: label values must lie in 0..255 to fit a palette PNG")
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(np.ascontiguousarray(labels, dtype=np.uint8))  # mode "L"
    image.putpalette(_voc_palette_list())  # "L" -> "P", pixel values kept as indices
    image.save(path, compress_level=_PNG_COMPRESS_LEVEL)


def write_depth(path: str | Path, depth: np.ndarray, scale: float) -> None:
    """Write metres (H, W) as a 16-bit PNG holding ``round(depth / scale)``; non-finite or ≤ 0 values become 0.

    Raises:
        ValueError: a depth beyond ``65535 * scale`` metres, which the PNG cannot hold.
    """
    path = Path(path)
    depth = np.asarray(depth, dtype=np.float64)
    valid = np.isfinite(depth) & (depth > 0)
    units = np.where(valid, np.round(np.where(valid, depth, 0.0) / scale), 0.0)
    if units.max(initial=0) > 65535:
        raise ValueError(
            f"{path}: depth {depth[valid].max():.3f} m exceeds what a 16-bit PNG holds at scale {scale:g} "
            f"({65535 * scale:.3f} m)"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(units.astype(np.uint16)).save(path, compress_level=_PNG_COMPRESS_LEVEL)


DEPTH_OUT_OF_RANGE_FRACTION = 0.5
"""A sample with more of its valid depths outside (min_depth, max_depth] than this is refused (wrong unit)."""
UNIT_FACTORS = {"×10": 10.0, "×100": 100.0, "×256": 256.0, "×1000": 1000.0}
"""Unit mistakes the depth check names: the smallest factor that brings the median into range."""


def check_depth_range(
    depth: np.ndarray, min_depth: float, max_depth: float, where: str, depth_scale: float | None = None
) -> None:
    """Refuse a depth map whose valid values (> 0) lie mostly outside ``(min_depth, max_depth]`` metres: the file's
    unit or the reader's ``depth_scale`` is wrong, and training on it would silently learn clipped targets.

    Args:
        depth: (H, W) or (1, H, W) metres, 0 (or non-finite) = no measurement.
        min_depth: lower bound of the model's range (metres).
        max_depth: upper bound (metres).
        where: the file (or sample) named in the error.
        depth_scale: the reader's metres per PNG unit, if known (the error then gives the corrected value).

    Raises:
        DataError: naming ``where``, the fraction outside, the median, and the factor that brings it in range.
    """
    values = np.asarray(depth, dtype=np.float64)
    values = values[np.isfinite(values) & (values > 0)]
    if values.size == 0:
        return
    outside = float(np.mean((values <= min_depth) | (values > max_depth)))
    if outside <= DEPTH_OUT_OF_RANGE_FRACTION:
        return
    median = float(np.median(values))
    fixes = [
        (name, size, ratio)
        for name, factor in UNIT_FACTORS.items()
        for ratio, size in ((1 / factor, "large"), (factor, "small"))
        if min_depth < median * ratio <= max_depth
    ]
    hint = ""
    if fixes:
        name, size, ratio = fixes[0]  # the smallest factor that brings the median into range
        fix = f"data.reader_kwargs.depth_scale={depth_scale * ratio:.6g}" if depth_scale else "the reader's depth_scale"
        hint = f" The values look {name} too {size}: set {fix}."
    raise DataError(
        f"{where}: {outside:.0%} of the valid depths lie outside the model's range ({min_depth:g}, {max_depth:g}] m "
        f"(median {median:.4g} m): the depth unit or the reader's depth_scale is wrong.{hint} "
        "(NYU-Depth-v2 PNGs hold millimetres, depth_scale 0.001; KITTI's hold metres × 256, depth_scale 1/256.)"
    )


DEPTH_MEDIAN_FRACTIONS = (1 / 12, 3 / 4)
"""Plausible median valid depth of a dataset, as fractions of the model's ``max_depth``. Real data sit near 1/4:
NYU-Depth-v2 ≈ 2.5 m of 10 m, KITTI's LiDAR ≈ 10-20 m of 80 m, SynthScenes 2.5 m of 10 m (0.11-0.44 per image);
KITTI's metres × 256 read as millimetres gives 0.256× that (≈ 2.5-5 m of 80 m, 3-6 %, below 1/12), NYU's millimetres
read as KITTI's 1/256 m 3.9× (≈ 10 m of 10 m, above 3/4)."""
DEPTH_SCALES = {"millimetres (NYU-Depth-v2, ×1000)": 1 / 1000, "metres × 256 (KITTI)": 1 / 256}
"""The common conventions of 16-bit depth PNGs (metres per unit), named when a dataset's median fits one of them."""


def check_depth_median(
    depths: Sequence[np.ndarray],
    files: Sequence[str | Path],
    max_depth: float,
    source: str | Path,
    depth_scale: float | None = None,
) -> None:
    """Refuse a dataset whose median valid depth is implausible for the model's ``max_depth``: depths that fit the
    range but are a few times too small or too large (KITTI's metres × 256 read with NYU's millimetre scale), which
    :func:`check_depth_range` lets through.

    The statistic is the median of the per-file medians, so one wrong file among good ones does not move it (that
    file is :func:`check_depth_range`'s); it must lie within :data:`DEPTH_MEDIAN_FRACTIONS` of ``max_depth``.

    Args:
        depths: (H, W) metres of a few files spread over the dataset, 0 (or non-finite) = no measurement.
        files: the files they were read from (the first one is named in the error).
        max_depth: the model's upper bound (metres).
        source: the dataset (its split file), named in the error.
        depth_scale: the reader's metres per PNG unit, if known (the error then gives the value that fits).

    Raises:
        DataError: naming the first file, the median, its fraction of ``max_depth`` and the scale that fits.
    """
    medians = []
    for depth in depths:
        values = np.asarray(depth, dtype=np.float64)
        values = values[np.isfinite(values) & (values > 0)]
        if values.size:
            medians.append(float(np.median(values)))
    if not medians:
        return
    median = float(np.median(medians))
    low, high = (fraction * max_depth for fraction in DEPTH_MEDIAN_FRACTIONS)
    if low <= median <= high:
        return
    size = "small" if median < low else "large"
    target = math.sqrt(low * high)  # the middle of the plausible band (log scale)
    hint = " The depth unit or the reader's depth_scale is wrong."
    if depth_scale:
        fits = [
            (abs(math.log(median * scale / depth_scale / target)), f"the PNGs look like {name}", scale)
            for name, scale in DEPTH_SCALES.items()
            if not math.isclose(scale, depth_scale) and low <= median * scale / depth_scale <= high
        ]
        fits += [
            (abs(math.log(median * ratio / target)), f"the values look {name} too {size}", depth_scale * ratio)
            for name, factor in UNIT_FACTORS.items()
            for ratio in [factor if size == "small" else 1 / factor]
            if low <= median * ratio <= high
        ]
        if fits:  # the convention or unit factor that brings the median closest to the middle of the band
            _, what, scale = min(fits, key=lambda fit: fit[0])
            hint = (
                f" With depth_scale={depth_scale:.6g} {what}: set data.reader_kwargs.depth_scale={scale:.6g} "
                f"(median then {median * scale / depth_scale:.3g} m)."
            )
    more = f" and {len(files) - 1} more sampled depth files" if len(files) > 1 else ""
    raise DataError(
        f"{files[0]}{more} of {source}: the median valid depth {median:.3g} m is {median / max_depth:.1%} of the "
        f"model's max_depth {max_depth:g} m, implausibly {size} for depth data (NYU-Depth-v2, KITTI: about 1/4; "
        f"accepted: 1/12 to 3/4).{hint} If the depths are right, set model.max_depth to fit them (about 4 × the "
        f"median: {4 * median:.3g} m)."
    )
