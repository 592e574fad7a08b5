"""`/sdapi/v1/png-info`: the generation parameters written inside an image, as A1111 reads them.

The studio's PNGs carry A1111's `parameters` text chunk (see services/inference/pngmeta.py), so
clients that call png-info on each image they get back (the Photoshop plugin, many scripts from
A1111's wiki) read the prompt, seed and settings as they would from A1111. JPEG and WebP files carry
the same text in their EXIF UserComment, as A1111 writes it.
"""

from __future__ import annotations

import json
import re
from typing import Any

from PIL import Image

from ..compat_common import open_image

# A1111's pattern for the "Key: value, Key: "quoted, value"" line.
_PARAM = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')
_SIZE = re.compile(r"^(\d+)x(\d+)$")
_EXIF_IFD = 0x8769
_USER_COMMENT = 0x9286


def _user_comment(im: Image.Image) -> str | None:
    raw = im.getexif().get_ifd(_EXIF_IFD).get(_USER_COMMENT)
    if not isinstance(raw, bytes) or len(raw) < 8:
        return None
    prefix, body = raw[:8], raw[8:]
    if prefix == b"UNICODE\x00":
        return body.decode("utf-16-be", "replace")
    return body.decode("utf-8", "replace")


def read(data: bytes) -> tuple[str, dict[str, str]]:
    """(A1111 parameters text, the file's other text items). Blocking: call in a thread."""
    im = open_image(data, "image")
    items = {k: v for k, v in im.info.items() if isinstance(k, str) and isinstance(v, str)}
    geninfo = items.pop("parameters", None)
    if geninfo is None and im.format in ("JPEG", "WEBP"):
        geninfo = _user_comment(im)
    return geninfo or "", items


def _unquote(text: str) -> str:
    if len(text) >= 2 and text[0] == '"' and text[-1] == '"':
        try:
            value = json.loads(text)
        except ValueError:
            return text
        return value if isinstance(value, str) else text
    return text


def parse(geninfo: str) -> dict[str, Any]:
    """The parameters text as A1111's parse_generation_parameters returns it: "Prompt",
    "Negative prompt", then each "Key: value" of the last line, "Size" split into Size-1/Size-2."""
    lines = geninfo.strip().split("\n") if geninfo.strip() else []
    settings = lines.pop() if lines and len(_PARAM.findall(lines[-1])) >= 3 else ""
    prompt: list[str] = []
    negative: list[str] = []
    target = prompt
    for line in lines:
        if line.startswith("Negative prompt:"):
            target = negative
            line = line[len("Negative prompt:") :].strip()
        target.append(line.strip())
    result: dict[str, Any] = {"Prompt": "\n".join(prompt), "Negative prompt": "\n".join(negative)}
    for key, raw in _PARAM.findall(settings):
        value = _unquote(raw.strip())
        size = _SIZE.match(value)
        if size is not None:
            result[f"{key}-1"], result[f"{key}-2"] = size.group(1), size.group(2)
        else:
            result[key] = value
    result.setdefault("Clip skip", "1")
    return result
