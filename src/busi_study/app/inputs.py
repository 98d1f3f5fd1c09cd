"""Decoding uploaded image bytes for the app, in memory only, with one clear message per bad file.

The app never writes an upload to disk: bytes come from Streamlit's in-memory ``UploadedFile``
and are decoded here with PIL from a ``BytesIO``. The decoded image is the same array that
``busi_study.predict`` gets from a file (``read_rgb``: ``data.images.to_uint8``), so the app and
``predict`` give the same probabilities for the same image.

Refused, with a message for that file (the rest of a batch goes on):

* not a PNG, JPEG or BMP, or not decodable (corrupt, truncated, a text file renamed .png);
* more than :data:`MAX_PIXELS` pixels — checked on the header, *before* decoding, so a
  10,000 × 10,000 image (or a decompression bomb) costs no memory;
* a side shorter than :data:`MIN_SIDE` pixels (a 1 × 1 image has nothing to classify).

Accepted with a note: a 16-bit or floating-point image is scaled to 8 bit by its real range
(``data.images.to_uint8``, as ``predict`` does); an alpha channel (RGBA, LA, PA) is dropped as
``predict`` does; palette and CMYK images are converted to RGB. EXIF orientation is not applied (``predict`` does not
either, and ultrasound exports carry none).
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from ..data.images import is_high_depth, to_uint8
from ..errors import first_line

#: Formats the app accepts (PIL's names) and the file suffixes offered in the upload dialog.
FORMATS: tuple[str, ...] = ("PNG", "JPEG", "BMP")
SUFFIXES: tuple[str, ...] = ("png", "jpg", "jpeg", "bmp")
#: Largest image accepted, in pixels (25 MP; BUSI's largest image is 719 × 1048 = 0.75 MP).
MAX_PIXELS: int = 25_000_000
#: Shortest side accepted, in pixels (BUSI's shortest side is 190 px).
MIN_SIDE: int = 32


class InputRejected(ValueError):
    """An upload the app cannot classify; the message says why and what to do."""


@dataclass
class DecodedImage:
    name: str
    rgb: np.ndarray                      # uint8 (H, W, 3)
    format: str
    mode: str                            # PIL mode of the file as stored
    notes: list[str] = field(default_factory=list)

    @property
    def size_text(self) -> str:
        h, w = self.rgb.shape[:2]
        return f"{w} × {h} px"


def decode_upload(name: str, data: bytes) -> DecodedImage:
    """Decode one uploaded file (bytes, in memory) to RGB; raises :class:`InputRejected`."""
    if not data:
        raise InputRejected("empty file")
    with warnings.catch_warnings():
        # the pixel limit below is ours; PIL's own bomb warning would only repeat it
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            im = Image.open(io.BytesIO(data))
        except Image.DecompressionBombError as exc:
            raise InputRejected(f"image too large to open safely ({exc})") from exc
        except Exception as exc:
            raise InputRejected("not a readable image: the file is corrupt or not a PNG, JPEG or BMP") from exc
        with im:
            if im.format not in FORMATS:
                raise InputRejected(f"{im.format or 'unknown'} format: the app reads PNG, JPEG and BMP only")
            w, h = im.size
            if w * h > MAX_PIXELS:
                raise InputRejected(f"image too large: {w} × {h} px ({w * h / 1e6:.0f} MP; the limit is "
                                    f"{MAX_PIXELS / 1e6:.0f} MP, BUSI images are below 1 MP) — downscale it first")
            if min(w, h) < MIN_SIDE:
                raise InputRejected(f"image too small: {w} × {h} px (at least {MIN_SIDE} px a side; "
                                    "BUSI images are 190–1048 px a side)")
            mode = im.mode
            try:
                im.load()
                notes = []
                if is_high_depth(mode):
                    notes.append(f"{'16-bit' if mode.startswith('I;16') else mode + '-mode (32-bit)'} image scaled to 8 bit "
                                 "by its real range, as `predict` does; BUSI's images are 8-bit, so check the grey levels")
                if "A" in mode or (mode == "P" and "transparency" in im.info):
                    notes.append("alpha channel (transparency) ignored, as `predict` does")
                rgb = to_uint8(im, "RGB")
            except Exception as exc:
                raise InputRejected(f"cannot decode the image data ({type(exc).__name__}: "
                                    f"{first_line(exc, 120)}) — the file is probably truncated") from exc
    return DecodedImage(name=name, rgb=rgb, format=im.format, mode=mode, notes=notes)
