"""Rendering of JPEG thumbnails and previews from DICOM pixel data (dicom_ingest.previews)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.pixels import convert_color_space
from pydicom.uid import (
    BasicTextSRStorage,
    CTImageStorage,
    DeflatedExplicitVRLittleEndian,
    EnhancedCTImageStorage,
    ExplicitVRLittleEndian,
    JPEGBaseline8Bit,
    SecondaryCaptureImageStorage,
    generate_uid,
)

from dicom_ingest.previews import (
    Rendered,
    _window,
    frame_view,
    render_file,
    to_image,
)

# The contract: thumbnails fit in 256 px, previews in 1024 px (long side).
THUMB_SIZE = 256
PREVIEW_SIZE = 1024
# Tolerance for JPEG (lossy) round trips of flat regions, in 8-bit grey levels.
JPEG_TOLERANCE = 4


# --------------------------------------------------------------------------- helpers


def _dataset(
    pixels: np.ndarray,
    photometric: str = "MONOCHROME2",
    *,
    frames: int | None = None,
    sop_class: str = SecondaryCaptureImageStorage,
    **attrs: object,
) -> Dataset:
    """A minimal uncompressed image data set holding ``pixels`` (frames first if multi-frame)."""
    pixels = np.ascontiguousarray(pixels)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "OT"
    shape = pixels.shape[1:] if frames else pixels.shape
    if frames:
        ds.NumberOfFrames = frames
    ds.Rows, ds.Columns = shape[0], shape[1]
    colour = len(shape) == 3
    ds.SamplesPerPixel = 3 if colour else 1
    if colour:
        ds.PlanarConfiguration = 0
    ds.PhotometricInterpretation = photometric
    bits = pixels.dtype.itemsize * 8
    ds.BitsAllocated = ds.BitsStored = bits
    ds.HighBit = bits - 1
    ds.PixelRepresentation = 1 if np.issubdtype(pixels.dtype, np.signedinteger) else 0
    for keyword, value in attrs.items():
        setattr(ds, keyword, value)
    ds.PixelData = pixels.tobytes()
    return ds


def _save(ds: Dataset, tmp_path: Path) -> str:
    path = tmp_path / f"{ds.SOPInstanceUID}.dcm"
    ds.save_as(path, enforce_file_format=True)
    return str(path)


def _render(ds: Dataset, tmp_path: Path) -> Rendered:
    rendered = render_file(_save(ds, tmp_path))
    assert rendered.error is None, rendered.error
    return rendered


def _decode(jpeg: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(jpeg))
    image.load()
    assert image.format == "JPEG"
    return image


def _preview(rendered: Rendered, frame: int = 0) -> np.ndarray:
    """The decoded preview of ``frame`` as an int array (greyscale or RGB)."""
    jpeg = [data for kind, index, data in rendered.images if kind == "preview" and index == frame]
    assert len(jpeg) == 1
    return np.asarray(_decode(jpeg[0])).astype(np.int64)


def _thumb(rendered: Rendered) -> np.ndarray:
    jpeg = [data for kind, _, data in rendered.images if kind == "thumb"]
    assert len(jpeg) == 1
    return np.asarray(_decode(jpeg[0])).astype(np.int64)


def _item(**attrs: object) -> Dataset:
    item = Dataset()
    for keyword, value in attrs.items():
        setattr(item, keyword, value)
    return item


def _ct(hu: np.ndarray, slope: float = 1.0, intercept: float = -1024.0, **attrs: object) -> Dataset:
    """A CT slice whose modality values (slope * stored + intercept) are ``hu``."""
    stored = np.rint((hu - intercept) / slope)
    assert stored.min() >= 0 and stored.max() <= 65535
    return _dataset(
        stored.astype(np.uint16),
        sop_class=CTImageStorage,
        RescaleSlope=slope,
        RescaleIntercept=intercept,
        **attrs,
    )


def _bands(values: tuple[float, ...], size: int = 48) -> np.ndarray:
    """Horizontal bands of equal height, one per value, top to bottom."""
    rows = size // len(values)
    return np.repeat(np.asarray(values, dtype=np.float64), rows)[:, None].repeat(size, axis=1)


def _band_mean(image: np.ndarray, band: int, count: int) -> float:
    """Mean of the central part of horizontal band ``band`` (away from JPEG edge ringing)."""
    rows = image.shape[0] // count
    top = band * rows
    return float(image[top + 3 : top + rows - 3, 3:-3].mean())


def _gradient(size: int = 64, high: int = 3000) -> np.ndarray:
    ramp = np.linspace(0, high, size)
    return (ramp[None, :] + ramp[:, None] / 4).astype(np.uint16)


# --------------------------------------------------------------------------- greyscale


@pytest.mark.parametrize("windowed", [False, True], ids=["percentile", "window"])
def test_monochrome1_is_rendered_inverted(tmp_path: Path, windowed: bool) -> None:
    pixels = _gradient()
    window = {"WindowCenter": 1500, "WindowWidth": 2000} if windowed else {}
    mono2 = _preview(_render(_dataset(pixels, "MONOCHROME2", **window), tmp_path))
    mono1 = _preview(_render(_dataset(pixels, "MONOCHROME1", **window), tmp_path))

    assert mono2.max() - mono2.min() > 200  # the picture has real contrast
    # Same stored values: MONOCHROME1 is the negative of MONOCHROME2.
    assert np.abs(mono1 + mono2 - 255).mean() < 2
    assert mono2[2, 2] < 40 and mono1[2, 2] > 215  # low values: dark in 2, bright in 1


def test_ct_window_centre_and_width_are_applied(tmp_path: Path) -> None:
    hu = _bands((-1000.0, 1000.0, 40.0))
    image = _preview(_render(_ct(hu, WindowCenter=40, WindowWidth=400), tmp_path))

    assert _band_mean(image, 0, 3) <= JPEG_TOLERANCE  # air: below the window → black
    assert _band_mean(image, 1, 3) >= 255 - JPEG_TOLERANCE  # bone: above the window → white
    assert abs(_band_mean(image, 2, 3) - 128) <= 10  # at the centre → mid grey


def test_window_from_multi_valued_window_uses_the_first_pair(tmp_path: Path) -> None:
    hu = _bands((-1000.0, 1000.0, 40.0))
    ds = _ct(hu, WindowCenter=[40, 2000], WindowWidth=[400, 10])
    image = _preview(_render(ds, tmp_path))
    assert abs(_band_mean(image, 2, 3) - 128) <= 10


@pytest.mark.parametrize("slope, intercept", [(2.0, -2048.0), (0.5, -1000.0)])
def test_rescale_slope_and_intercept_are_honoured(
    tmp_path: Path, slope: float, intercept: float
) -> None:
    # HU values that every encoding below represents exactly.
    hu = np.repeat(np.arange(-600, 600, 50, dtype=np.float64)[:, None], 48, axis=1)
    window = {"WindowCenter": 0, "WindowWidth": 1000}
    reference = _preview(_render(_ct(hu, 1.0, -1024.0, **window), tmp_path))
    other = _preview(_render(_ct(hu, slope, intercept, **window), tmp_path))

    assert reference.max() - reference.min() > 200
    assert np.abs(reference - other).max() <= 1


def test_rescale_is_applied_before_the_percentile_window(tmp_path: Path) -> None:
    # Without a window the HU values only shift; a negative slope must still flip the picture.
    stored = _gradient(high=1000)
    plain = _preview(_render(_dataset(stored), tmp_path))
    flipped = _preview(_render(_dataset(stored, RescaleSlope=-1, RescaleIntercept=0), tmp_path))
    assert plain[2, 2] < 40 and plain[-3, -3] > 215
    assert flipped[2, 2] > 215 and flipped[-3, -3] < 40


def test_without_window_a_single_outlier_does_not_darken_the_image(tmp_path: Path) -> None:
    pixels = np.full((64, 64), 100, dtype=np.uint16)
    pixels[:, 32:] = 200
    pixels[0, 0] = 60000  # one hot pixel: a min/max stretch would make everything black
    image = _preview(_render(_dataset(pixels), tmp_path))

    left, right = image[8:-8, 4:28].mean(), image[8:-8, 36:-4].mean()
    assert left <= 20
    assert right >= 235


def test_uniform_image_without_window_renders_without_error(tmp_path: Path) -> None:
    image = _preview(_render(_dataset(np.full((32, 32), 777, dtype=np.uint16)), tmp_path))
    assert image.shape == (32, 32)
    assert image.max() - image.min() <= JPEG_TOLERANCE  # flat in, flat out


def test_signed_pixels_with_negative_values_render_darker_than_positive(tmp_path: Path) -> None:
    pixels = np.full((48, 48), -500, dtype=np.int16)
    pixels[24:] = 500
    # Read as unsigned, -500 would be 65036: the brightest value in the picture.
    windowed = _preview(_render(_dataset(pixels, WindowCenter=0, WindowWidth=2000), tmp_path))
    assert abs(_band_mean(windowed, 0, 2) - 0.25 * 255) <= 6
    assert abs(_band_mean(windowed, 1, 2) - 0.75 * 255) <= 6

    stretched = _preview(_render(_dataset(pixels), tmp_path))
    assert _band_mean(stretched, 0, 2) <= JPEG_TOLERANCE
    assert _band_mean(stretched, 1, 2) >= 255 - JPEG_TOLERANCE


# --------------------------------------------------------------------------- _window


def test_window_linear_follows_the_standard_formula() -> None:
    # PS3.3 C.11.2.1.2.1: below c - 0.5 - (w-1)/2 → min, above c - 0.5 + (w-1)/2 → max.
    center, width = 40.0, 400.0
    low_edge = center - 0.5 - (width - 1) / 2
    high_edge = center - 0.5 + (width - 1) / 2
    values = np.array([-5000.0, low_edge, center - 0.5, high_edge, 5000.0])
    out = _window(values, center, width, "LINEAR")
    np.testing.assert_allclose(out, [0.0, 0.0, 0.5, 1.0, 1.0])


def test_window_of_width_one_is_a_threshold() -> None:
    out = _window(np.array([9.0, 9.4, 9.6, 11.0]), 10.0, 1.0, "LINEAR")
    np.testing.assert_array_equal(out, [0.0, 0.0, 1.0, 1.0])


def test_window_linear_exact_and_sigmoid() -> None:
    values = np.array([-200.0, 0.0, 25.0, 50.0, 200.0])
    exact = _window(values, 0.0, 100.0, "LINEAR_EXACT")  # (x - c) / w + 0.5, clipped
    np.testing.assert_allclose(exact, [0.0, 0.5, 0.75, 1.0, 1.0])

    sigmoid = _window(values, 0.0, 100.0, "SIGMOID")  # 1 / (1 + exp(-4 (x - c) / w))
    np.testing.assert_allclose(sigmoid, 1 / (1 + np.exp(-4 * values / 100.0)))
    assert 0.0 < sigmoid[0] < 0.001 and 0.999 < sigmoid[-1] < 1.0  # never clipped


def test_voi_lut_function_from_the_header_is_used(tmp_path: Path) -> None:
    hu = _bands((-50.0, 50.0))
    linear = _preview(_render(_ct(hu, WindowCenter=0, WindowWidth=100), tmp_path))
    sigmoid = _preview(
        _render(_ct(hu, WindowCenter=0, WindowWidth=100, VOILUTFunction="SIGMOID"), tmp_path)
    )
    # LINEAR saturates at ±w/2; SIGMOID at ±w/2 gives 1/(1+e^2) ≈ 0.12 and ≈ 0.88.
    assert _band_mean(linear, 0, 2) <= JPEG_TOLERANCE
    assert abs(_band_mean(sigmoid, 0, 2) - 255 / (1 + np.exp(2.0))) <= 6
    assert abs(_band_mean(sigmoid, 1, 2) - 255 / (1 + np.exp(-2.0))) <= 6


# --------------------------------------------------------------------------- colour


def _palette_dataset(bits: int) -> Dataset:
    indices = np.zeros((48, 48), dtype=np.uint8)
    indices[:, :16] = 1  # left: red entry
    indices[:, 32:] = 2  # right: blue entry; middle: entry 0 (black)
    ds = _dataset(indices, "PALETTE COLOR")
    full = 2**bits - 1
    dtype = np.uint8 if bits == 8 else np.uint16
    luts = {"Red": [0, full, 0, 0], "Green": [0, 0, 0, 0], "Blue": [0, 0, full, 0]}
    for colour, values in luts.items():
        setattr(ds, f"{colour}PaletteColorLookupTableDescriptor", [4, 0, bits])
        setattr(ds, f"{colour}PaletteColorLookupTableData", np.array(values, dtype).tobytes())
    return ds


@pytest.mark.parametrize("bits", [8, 16])
def test_palette_colour_renders_rgb_from_the_lookup_table(tmp_path: Path, bits: int) -> None:
    rendered = _render(_palette_dataset(bits), tmp_path)
    assert _decode(rendered.images[1][2]).mode == "RGB"
    image = _preview(rendered)

    red, black, blue = image[8:-8, 3:13], image[8:-8, 19:29], image[8:-8, 35:45]
    np.testing.assert_allclose(red.mean(axis=(0, 1)), [255, 0, 0], atol=12)
    np.testing.assert_allclose(blue.mean(axis=(0, 1)), [0, 0, 255], atol=12)
    assert black.max() <= 20


def _colour_bands() -> np.ndarray:
    """Red, green and blue horizontal bands (top to bottom), 8-bit RGB."""
    rgb = np.zeros((48, 48, 3), dtype=np.uint8)
    for band in range(3):
        rgb[band * 16 : (band + 1) * 16, :, band] = 255
    return rgb


@pytest.mark.parametrize("photometric", ["RGB", "YBR_FULL"])
def test_uncompressed_colour_is_preserved(tmp_path: Path, photometric: str) -> None:
    rgb = _colour_bands()
    pixels = rgb if photometric == "RGB" else convert_color_space(rgb, "RGB", "YBR_FULL")
    rendered = _render(_dataset(pixels, photometric), tmp_path)
    assert _decode(rendered.images[1][2]).mode == "RGB"
    image = _preview(rendered)

    for band, expected in enumerate(([255, 0, 0], [0, 255, 0], [0, 0, 255])):
        mean = image[band * 16 + 3 : (band + 1) * 16 - 3, 3:-3].mean(axis=(0, 1))
        np.testing.assert_allclose(mean, expected, atol=12)


def test_16_bit_rgb_is_scaled_to_8_bit(tmp_path: Path) -> None:
    rgb16 = _colour_bands().astype(np.uint16) * 257  # full scale 65535
    image = _preview(_render(_dataset(rgb16, "RGB"), tmp_path))
    np.testing.assert_allclose(image[3:13, 3:-3].mean(axis=(0, 1)), [255, 0, 0], atol=12)


def test_16_bit_rgb_with_12_bits_stored_is_scaled_by_bits_stored(tmp_path: Path) -> None:
    rgb12 = (_colour_bands().astype(np.int64) * 4095 // 255).astype(np.uint16)
    ds = _dataset(rgb12, "RGB")
    ds.BitsStored, ds.HighBit = 12, 11
    image = _preview(_render(ds, tmp_path))
    # Full-scale red in 12 bits must be bright red, not 4095/65535 ≈ 6 % of full brightness.
    np.testing.assert_allclose(image[3:13, 3:-3].mean(axis=(0, 1)), [255, 0, 0], atol=12)


# --------------------------------------------------------------------------- frames


def _moving_square(frames: int, size: int = 64) -> np.ndarray:
    """Each frame: dark background with a bright square at a frame-specific position."""
    pixels = np.full((frames, size, size), 100, dtype=np.uint16)
    for index in range(frames):
        top = 4 + index * 10
        pixels[index, top : top + 10, top : top + 10] = 1000
    return pixels


def test_multi_frame_gives_one_thumb_and_a_preview_per_frame(tmp_path: Path) -> None:
    rendered = _render(_dataset(_moving_square(5), frames=5), tmp_path)

    kinds = [(kind, index) for kind, index, _ in rendered.images]
    assert [k for k in kinds if k[0] == "thumb"] == [("thumb", 0)]
    assert sorted(index for kind, index in kinds if kind == "preview") == [0, 1, 2, 3, 4]
    assert len(rendered.images) == 6

    previews = [_preview(rendered, index) for index in range(5)]
    for index, image in enumerate(previews):
        top = 4 + index * 10
        assert image[top + 3 : top + 7, top + 3 : top + 7].mean() > 200  # this frame's square
        for other in range(5):
            if other != index:
                assert np.abs(image - previews[other]).mean() > 5
    # The thumb shows frame 0.
    thumb = _thumb(rendered)
    assert np.abs(thumb - previews[0]).mean() < np.abs(thumb - previews[1]).mean()
    assert thumb[7:11, 7:11].mean() > 200


def test_deflated_multi_frame_renders_every_frame(tmp_path: Path) -> None:
    ds = _dataset(_moving_square(3), frames=3)
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    path = _save(ds, tmp_path)
    assert pydicom.dcmread(path).file_meta.TransferSyntaxUID == DeflatedExplicitVRLittleEndian

    rendered = render_file(path)
    assert rendered.error is None
    assert sorted(i for kind, i, _ in rendered.images if kind == "preview") == [0, 1, 2]
    for index in range(3):
        top = 4 + index * 10
        assert _preview(rendered, index)[top + 3 : top + 7, top + 3 : top + 7].mean() > 200


def _enhanced(frames: int, pixels: np.ndarray) -> Dataset:
    """Enhanced CT: rescale and window only in the functional groups, none at the top level."""
    ds = _dataset(pixels, frames=frames, sop_class=EnhancedCTImageStorage)
    shared = Dataset()
    shared.PixelValueTransformationSequence = [
        _item(RescaleSlope=1, RescaleIntercept=-1024, RescaleType="HU")
    ]
    shared.FrameVOILUTSequence = [_item(WindowCenter=40, WindowWidth=400)]
    ds.SharedFunctionalGroupsSequence = [shared]
    per_frame = [Dataset() for _ in range(frames)]
    # Frame 1 overrides the shared window with a wide one; frame 0 keeps the shared one.
    per_frame[1].FrameVOILUTSequence = [_item(WindowCenter=0, WindowWidth=4000)]
    ds.PerFrameFunctionalGroupsSequence = per_frame
    return ds


def test_frame_view_takes_functional_groups_and_per_frame_overrides_shared() -> None:
    ds = _enhanced(3, np.zeros((3, 4, 4), dtype=np.uint16))
    assert "WindowCenter" not in ds and "RescaleIntercept" not in ds

    first = frame_view(ds, 0)
    assert (float(first.WindowCenter), float(first.WindowWidth)) == (40.0, 400.0)
    assert float(first.RescaleIntercept) == -1024.0 and float(first.RescaleSlope) == 1.0

    second = frame_view(ds, 1)
    assert (float(second.WindowCenter), float(second.WindowWidth)) == (0.0, 4000.0)
    assert float(second.RescaleIntercept) == -1024.0  # still from the shared group

    beyond = frame_view(ds, 7)  # no per-frame item: the shared values apply
    assert float(beyond.WindowWidth) == 400.0


def test_frame_view_per_frame_rescale_overrides_top_level() -> None:
    ds = _dataset(
        np.zeros((2, 4, 4), dtype=np.uint16),
        frames=2,
        RescaleSlope=1,
        RescaleIntercept=0,
        WindowCenter=10,
        WindowWidth=20,
    )
    ds.PerFrameFunctionalGroupsSequence = [
        _item(PixelValueTransformationSequence=[_item(RescaleSlope=3, RescaleIntercept=-7)]),
        Dataset(),
    ]
    overridden, plain = frame_view(ds, 0), frame_view(ds, 1)
    assert (float(overridden.RescaleSlope), float(overridden.RescaleIntercept)) == (3.0, -7.0)
    assert (float(plain.RescaleSlope), float(plain.RescaleIntercept)) == (1.0, 0.0)
    assert float(overridden.WindowCenter) == 10.0  # untouched attributes stay


def test_enhanced_multi_frame_renders_with_functional_group_window(tmp_path: Path) -> None:
    hu = _bands((-1000.0, 1000.0, 40.0))
    stored = np.stack([hu + 1024] * 3).astype(np.uint16)
    rendered = _render(_enhanced(3, stored), tmp_path)

    shared_window = _preview(rendered, 0)  # W 400 around 40: black / white / mid grey
    assert _band_mean(shared_window, 0, 3) <= JPEG_TOLERANCE
    assert _band_mean(shared_window, 1, 3) >= 255 - JPEG_TOLERANCE
    assert abs(_band_mean(shared_window, 2, 3) - 128) <= 10

    wide_window = _preview(rendered, 1)  # W 4000 around 0: -1000 → 0.25, +1000 → 0.75
    assert abs(_band_mean(wide_window, 0, 3) - 0.25 * 255) <= 6
    assert abs(_band_mean(wide_window, 1, 3) - 0.75 * 255) <= 6


def test_to_image_uses_the_frame_index_for_per_frame_values() -> None:
    ds = _enhanced(2, np.zeros((2, 4, 4), dtype=np.uint16))
    frame = np.full((8, 8), 1024 + 1000, dtype=np.uint16)  # +1000 HU
    assert np.asarray(to_image(ds, frame, 0)).min() == 255  # shared W 400: saturated
    assert np.asarray(to_image(ds, frame, 1)).max() == round(0.75 * 255)  # frame 1: W 4000


# --------------------------------------------------------------------------- sizes


def test_large_image_is_downscaled_to_thumb_and_preview_size(tmp_path: Path) -> None:
    pixels = np.tile(np.arange(2048, dtype=np.uint16), (2048, 1))
    rendered = _render(_dataset(pixels), tmp_path)
    thumb = _decode(rendered.images[0][2])
    preview = _decode(rendered.images[1][2])
    assert rendered.images[0][0] == "thumb" and rendered.images[1][0] == "preview"
    assert max(thumb.size) <= THUMB_SIZE and max(thumb.size) >= THUMB_SIZE - 1
    assert max(preview.size) <= PREVIEW_SIZE and max(preview.size) >= PREVIEW_SIZE - 1


def test_downscaling_keeps_the_aspect_ratio(tmp_path: Path) -> None:
    pixels = np.tile(np.arange(512, dtype=np.uint16), (2048, 1))  # 2048 rows, 512 columns
    rendered = _render(_dataset(pixels), tmp_path)
    assert _decode(rendered.images[0][2]).size == (THUMB_SIZE // 4, THUMB_SIZE)
    assert _decode(rendered.images[1][2]).size == (PREVIEW_SIZE // 4, PREVIEW_SIZE)


def test_small_image_is_not_upscaled(tmp_path: Path) -> None:
    rendered = _render(_dataset(_gradient(64)), tmp_path)
    assert [_decode(data).size for _, _, data in rendered.images] == [(64, 64), (64, 64)]


# --------------------------------------------------------------------------- no pixels, errors


def test_instance_without_pixel_data_gives_no_images_and_no_error(tmp_path: Path) -> None:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = BasicTextSRStorage
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "SR"
    ds.ValueType = "CONTAINER"
    rendered = render_file(_save(ds, tmp_path))
    assert rendered == Rendered(images=[], error=None)


def test_corrupt_compressed_pixel_data_is_reported_not_raised(tmp_path: Path) -> None:
    ds = _dataset(np.zeros((16, 16), dtype=np.uint8))
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    ds.PixelData = encapsulate([b"\xff\xd8\xff\xe0 this is not a JPEG stream \xff\xd9"])
    ds["PixelData"].VR = "OB"
    ds.set_original_encoding(False, True)
    rendered = render_file(_save(ds, tmp_path))
    assert rendered.images == []
    assert rendered.error


def test_missing_or_unreadable_file_is_reported_not_raised(tmp_path: Path) -> None:
    missing = render_file(str(tmp_path / "absent.dcm"))
    assert missing.images == [] and missing.error and "FileNotFoundError" in missing.error

    junk = tmp_path / "junk.dcm"
    junk.write_bytes(b"not dicom at all" * 10)
    rendered = render_file(str(junk))
    assert rendered.images == [] and rendered.error


# --------------------------------------------------------------------------- pydicom samples

SAMPLES = [
    "CT_small.dcm",
    "MR_small_RLE.dcm",
    "MR_small_jpeg_ls_lossless.dcm",
    "MR_small_jp2klossless.dcm",
    "JPEG2000.dcm",
    "SC_rgb_jpeg_gdcm.dcm",
    "JPGExtended.dcm",
    "SC_rgb_jpeg_dcmtk.dcm",
    "image_dfl.dcm",
    "SC_rgb_jls_lossy_line.dcm",
    "693_J2KI.dcm",
    "emri_small_jpeg_2k_lossless.dcm",
    "JPEG-LL.dcm",
]
COLOUR_BAR_SAMPLES = ["SC_rgb_jpeg_dcmtk.dcm", "SC_rgb_jpeg_gdcm.dcm"]


@pytest.mark.parametrize("name", SAMPLES)
def test_pydicom_sample_renders_without_error(name: str) -> None:
    path = get_testdata_file(name)
    header = pydicom.dcmread(path, stop_before_pixels=True)
    frames = int(header.get("NumberOfFrames", 1) or 1)

    rendered = render_file(path)

    assert rendered.error is None
    assert [(k, i) for k, i, _ in rendered.images] == (
        [("thumb", 0)] + [("preview", i) for i in range(frames)]
    )
    for kind, _, data in rendered.images:
        image = _decode(data)
        assert max(image.size) <= (THUMB_SIZE if kind == "thumb" else PREVIEW_SIZE)
        expected_mode = "L" if int(header.SamplesPerPixel) == 1 else "RGB"
        assert image.mode == expected_mode
    assert np.asarray(_decode(rendered.images[1][2])).std() > 5  # not a blank picture


@pytest.mark.parametrize("name", COLOUR_BAR_SAMPLES)
def test_colour_jpeg_sample_keeps_its_colours(name: str) -> None:
    rendered = render_file(get_testdata_file(name))
    assert rendered.error is None
    image = _preview(rendered)
    assert image.shape == (100, 100, 3)
    red, green, blue = image[1:8, 10:90].mean(axis=(0, 1))  # top bar of the colour-bar picture
    assert red > 200 and green < 60 and blue < 60


# --------------------------------------------------------------------------- known defects


def test_voi_lut_sequence_is_applied_after_rescale(tmp_path: Path) -> None:
    # Stored 1000 / 1100 with intercept -1000 are 0 / 100 HU; the VOI LUT maps HU 0..255.
    ds = _ct(_bands((0.0, 100.0)), 1.0, -1000.0)
    lut = Dataset()
    lut.add_new("LUTDescriptor", "US", [256, 0, 8])
    lut.add_new("LUTData", "US", list(range(256)))
    ds.VOILUTSequence = [lut]
    image = _preview(_render(ds, tmp_path))
    # LUT entry = index on 8 bits: 0 HU -> 0 (black), 100 HU -> 100 of 255.
    assert _band_mean(image, 0, 2) < 5
    assert 95 <= _band_mean(image, 1, 2) <= 105


@pytest.mark.parametrize(
    "attrs",
    [
        {"WindowCenter": None, "WindowWidth": None},
        {"RescaleSlope": None, "RescaleIntercept": None},
    ],
    ids=["empty-window", "empty-rescale"],
)
def test_empty_window_or_rescale_values_fall_back_instead_of_failing(
    tmp_path: Path, attrs: dict[str, object]
) -> None:
    ds = _dataset(_gradient(), **attrs)
    rendered = render_file(_save(ds, tmp_path))
    assert rendered.error is None
    assert len(rendered.images) == 2
