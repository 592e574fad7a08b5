"""Pure pieces of the compatible faces: reading A1111's parameters text back (png-info), and the
output formats OpenAI's output_format and A1111's samples_format ask for."""

from __future__ import annotations

import asyncio
import io

from PIL import Image, PngImagePlugin

from services.gateway.compat import formats, pnginfo

A1111_TEXT = (
    'a castle, "golden" hour\nat dusk\n'
    "Negative prompt: fog, rain\n"
    "Steps: 20, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, Seed: 42, Size: 512x768, "
    'Model: tiny-sd, Lora hashes: "a: 1, b: 2", Version: easel'
)


def test_parse_reads_prompts_and_settings_as_a1111_does() -> None:
    parsed = pnginfo.parse(A1111_TEXT)
    assert parsed["Prompt"] == 'a castle, "golden" hour\nat dusk'
    assert parsed["Negative prompt"] == "fog, rain"
    assert parsed["Steps"] == "20" and parsed["Seed"] == "42" and parsed["Schedule type"] == "Karras"
    assert (parsed["Size-1"], parsed["Size-2"]) == ("512", "768")
    assert parsed["Lora hashes"] == "a: 1, b: 2"  # a quoted value keeps its commas
    assert parsed["Clip skip"] == "1"  # A1111 fills the default in


def test_parse_of_no_text_or_a_prompt_only() -> None:
    assert pnginfo.parse("") == {"Prompt": "", "Negative prompt": "", "Clip skip": "1"}
    only = pnginfo.parse("just a prompt, with a comma")
    assert only["Prompt"] == "just a prompt, with a comma" and "Steps" not in only


def _png_with_text(text: str) -> bytes:
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", text)
    info.add_text("Software", "easel")
    out = io.BytesIO()
    Image.new("RGB", (16, 16), (1, 2, 3)).save(out, "PNG", pnginfo=info)
    return out.getvalue()


def test_read_finds_the_parameters_chunk_and_the_other_items() -> None:
    geninfo, items = pnginfo.read(_png_with_text(A1111_TEXT))
    assert geninfo == A1111_TEXT and items == {"Software": "easel"}


def test_convert_makes_the_asked_format() -> None:
    png = _png_with_text("x")
    assert asyncio.run(formats.convert(png, "png")) is png
    for name, pil in (("jpeg", "JPEG"), ("jpg", "JPEG"), ("webp", "WEBP")):
        data = asyncio.run(formats.convert(png, name, quality=50))
        with Image.open(io.BytesIO(data)) as im:
            assert im.format == pil and im.size == (16, 16)
        # The parameters travel along, in EXIF, where png-info finds them.
        assert pnginfo.read(data)[0] == "x"
    assert formats.canonical("JPG") == "jpeg" and formats.canonical("gif") == ""
    assert formats.mime_type("webp") == "image/webp"
