"""Render JPEG thumbnails and previews from DICOM pixel data.

Runs in a separate process (see ``Pipeline``): decoding and encoding never compete with
the association threads for the interpreter lock.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import pydicom
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.pixels import apply_color_lut, apply_voi_lut, iter_pixels
from pydicom.uid import DeflatedExplicitVRLittleEndian

THUMB_SIZE = 256
PREVIEW_SIZE = 1024
_PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
_FRAME_ATTRS = ("RescaleSlope", "RescaleIntercept", "WindowCenter", "WindowWidth", "VOILUTFunction")


@dataclass
class Rendered:
    """JPEGs as (kind, frame, bytes): one ``thumb`` for frame 0, a ``preview`` per frame."""

    images: list[tuple[str, int, bytes]] = field(default_factory=list)
    error: str | None = None


def render_file(path: str) -> Rendered:
    """Render every frame of the instance at ``path``; never raises."""
    try:
        # Large values (the pixel data) stay on disk until iter_pixels reads them by frame.
        header = pydicom.dcmread(path, defer_size=4096)
        if not any(k in header for k in _PIXEL_KEYWORDS):
            return Rendered()
        images: list[tuple[str, int, bytes]] = []
        for index, frame in enumerate(_frames(path, header)):
            picture = to_image(header, frame, index)
            if index == 0:
                images.append(("thumb", 0, _jpeg(picture, THUMB_SIZE, 80)))
            images.append(("preview", index, _jpeg(picture, PREVIEW_SIZE, 88)))
        return Rendered(images=images)
    except Exception as exc:  # any decoder failure becomes a recorded, visible state
        return Rendered(error=f"{type(exc).__name__}: {str(exc)[:160]}")


def _frames(path: str, header: Dataset) -> Iterator[np.ndarray]:
    """Decode frame by frame from the file; deflated data sets are inflated whole first."""
    if header.file_meta.TransferSyntaxUID == DeflatedExplicitVRLittleEndian:
        full = pydicom.dcmread(path)
        array = full.pixel_array
        frames = int(full.get("NumberOfFrames", 1) or 1)
        yield from (array if frames > 1 else [array])
        return
    yield from iter_pixels(path)


def frame_view(ds: Dataset, index: int) -> Dataset:
    """The rescale and window attributes that apply to one frame.

    Enhanced multi-frame objects keep them in the shared and per-frame functional
    groups instead of the top level; the most specific one wins.
    """
    view = Dataset()
    for keyword in _FRAME_ATTRS:
        if keyword in ds:
            setattr(view, keyword, ds[keyword].value)
    groups = []
    if "SharedFunctionalGroupsSequence" in ds:
        groups.append(ds.SharedFunctionalGroupsSequence[0])
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    if per_frame is not None and index < len(per_frame):
        groups.append(per_frame[index])
    for group in groups:
        for seq_name in ("PixelValueTransformationSequence", "FrameVOILUTSequence"):
            for item in group.get(seq_name, [])[:1]:
                for keyword in _FRAME_ATTRS:
                    if keyword in item:
                        setattr(view, keyword, item[keyword].value)
    return view


def _first(value: object, default: float) -> float:
    """The first value of a (possibly multi-valued, possibly empty) numeric attribute."""
    if isinstance(value, list | tuple | pydicom.multival.MultiValue):
        value = value[0] if len(value) else None
    if value in (None, ""):
        return default
    return float(value)  # type: ignore[arg-type]


def to_image(ds: Dataset, frame: np.ndarray, index: int = 0) -> Image.Image:
    """Turn one decoded frame into an 8-bit greyscale or RGB picture for display."""
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    if photometric == "PALETTE COLOR":
        frame = apply_color_lut(frame, ds)
    if frame.ndim == 3:
        return Image.fromarray(_scale_colour(frame, _colour_bits(ds, photometric)), "RGB")
    view = frame_view(ds, index)
    values = frame.astype(np.float64) * _first(view.get("RescaleSlope"), 1.0) + _first(
        view.get("RescaleIntercept"), 0.0
    )
    center = _first(view.get("WindowCenter"), 0.0)
    width = _first(view.get("WindowWidth"), 0.0)
    if width > 0:
        unit = _window(values, center, width, str(view.get("VOILUTFunction", "LINEAR")).upper())
    elif "VOILUTSequence" in ds:
        # The VOI LUT takes the modality LUT's output (PS3.3 C.11.2), not stored values.
        lut = apply_voi_lut(np.rint(values).astype(np.int64), ds, index=0, prefer_lut=True).astype(
            np.float64
        )
        bits = int(ds.VOILUTSequence[0].LUTDescriptor[2])
        unit = _stretch(lut, 0.0, float(2**bits - 1))
    else:
        low, high = np.percentile(values, (0.5, 99.5))
        unit = _stretch(values, float(low), float(high))
    if photometric == "MONOCHROME1":
        unit = 1.0 - unit
    return Image.fromarray(np.rint(unit * 255).astype(np.uint8), "L")


def _window(values: np.ndarray, center: float, width: float, function: str) -> np.ndarray:
    """DICOM PS3.3 C.11.2.1.2 windowing into [0, 1]."""
    if function == "SIGMOID":
        return 1.0 / (1.0 + np.exp(-4.0 * (values - center) / width))
    if function == "LINEAR_EXACT":
        return np.clip((values - center) / width + 0.5, 0.0, 1.0)
    if width <= 1:
        return (values > center - 0.5).astype(np.float64)
    return np.clip((values - (center - 0.5)) / (width - 1) + 0.5, 0.0, 1.0)


def _stretch(values: np.ndarray, low: float, high: float) -> np.ndarray:
    if high <= low:
        return np.zeros_like(values) if high == low else values
    return np.clip((values - low) / (high - low), 0.0, 1.0)


def _colour_bits(ds: Dataset, photometric: str) -> int:
    """Significant bits of colour samples: the palette's entry size, else Bits Stored."""
    if photometric == "PALETTE COLOR":
        descriptor = ds.get("RedPaletteColorLookupTableDescriptor")
        return int(descriptor[2]) if descriptor else 16
    return int(ds.get("BitsStored", 8) or 8)


def _scale_colour(frame: np.ndarray, bits: int) -> np.ndarray:
    if frame.dtype == np.uint8 and bits <= 8:
        return frame
    top = float(2**bits - 1)
    return np.rint(np.clip(frame.astype(np.float64), 0, top) / top * 255).astype(np.uint8)


def _jpeg(picture: Image.Image, size: int, quality: int) -> bytes:
    image = picture.copy()
    image.thumbnail((size, size), Image.Resampling.LANCZOS)
    out = io.BytesIO()
    image.save(out, "JPEG", quality=quality, optimize=False)
    return out.getvalue()
