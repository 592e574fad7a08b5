"""Generation parameters inside PNG files.

Two text chunks: `easel` holds our parameters as JSON (read back exactly), and `parameters` holds the
AUTOMATIC1111 text that other tools (A1111's PNG Info, ComfyUI, civitai) already understand.
"""

from __future__ import annotations

import io
import json
import re
from typing import Any

from PIL import Image, PngImagePlugin, UnidentifiedImageError

from services.common.errors import invalid

from .schedulers import A1111_SAMPLERS, SAMPLERS, a1111_name

EASEL_CHUNK = "easel"
A1111_CHUNK = "parameters"

# A1111's own pattern for "Key: value" pairs; values may be quoted and then contain commas.
_PARAM_RE = re.compile(r'\s*([\w ./+\-]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')


def _fmt_number(value: object) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def a1111_text(params: dict[str, Any]) -> str:
    """Parameters in the layout A1111 writes under its images."""
    lines = [str(params.get("prompt", ""))]
    negative = params.get("negative_prompt")
    if negative:
        lines.append(f"Negative prompt: {negative}")
    fields: list[tuple[str, object]] = []
    sampler = params.get("sampler")
    if isinstance(sampler, str):
        label = a1111_name(sampler)
        if label.endswith(" Karras"):
            # A1111 1.9+ names the schedule separately; older readers still take "X Karras".
            fields += [("Sampler", label.removesuffix(" Karras")), ("Schedule type", "Karras")]
        else:
            fields.append(("Sampler", label))
    for key, label in (("steps", "Steps"), ("guidance", "CFG scale"), ("seed", "Seed")):
        if key in params:
            fields.append((label, _fmt_number(params[key])))
    if "width" in params and "height" in params:
        fields.append(("Size", f"{params['width']}x{params['height']}"))
    if "model_hash" in params:
        fields.append(("Model hash", params["model_hash"]))
    if "model" in params:
        fields.append(("Model", params["model"]))
    if params.get("kind") not in (None, "txt2img") and "strength" in params:
        fields.append(("Denoising strength", _fmt_number(params["strength"])))
    if "placement" in params:
        fields.append(("Offload", params["placement"]))
    fields.append(("Version", "easel"))
    # Steps first, as A1111 does: some readers look for a line that starts with it.
    fields.sort(key=lambda kv: kv[0] != "Steps")
    lines.append(", ".join(f"{k}: {_quote(str(v))}" for k, v in fields))
    return "\n".join(lines)


def _quote(value: str) -> str:
    if "," in value or "\n" in value or ":" in value:
        return json.dumps(value)
    return value


def parse_a1111(text: str) -> dict[str, Any]:
    """Our parameters from A1111's `parameters` text (fields we do not know go under `extra`)."""
    lines = text.strip().split("\n")
    settings = ""
    if lines and _PARAM_RE.findall(lines[-1]) and "Steps:" in lines[-1]:
        settings = lines.pop()
    prompt: list[str] = []
    negative: list[str] = []
    target = prompt
    for line in lines:
        if line.startswith("Negative prompt:"):
            target = negative
            line = line.removeprefix("Negative prompt:").strip()
        target.append(line)
    out: dict[str, Any] = {
        "prompt": "\n".join(prompt).strip(),
        "negative_prompt": "\n".join(negative).strip(),
    }
    extra: dict[str, str] = {}
    raw: dict[str, str] = {}
    for key, value in _PARAM_RE.findall(settings):
        value = value.strip()
        if value.startswith('"') and value.endswith('"'):
            try:
                value = str(json.loads(value))
            except json.JSONDecodeError:
                value = value[1:-1]
        raw[key.strip()] = value
    for key, value in raw.items():
        try:
            if key == "Steps":
                out["steps"] = int(value)
            elif key == "CFG scale":
                out["guidance"] = float(value)
            elif key == "Seed":
                out["seed"] = int(value)
            elif key == "Size":
                w, h = value.lower().split("x")
                out["width"], out["height"] = int(w), int(h)
            elif key == "Model":
                out["model"] = value
            elif key == "Model hash":
                out["model_hash"] = value
            elif key == "Denoising strength":
                out["strength"] = float(value)
            elif key == "Sampler":
                out["sampler"] = _our_sampler(value, raw.get("Schedule type", ""))
            elif key != "Schedule type":
                extra[key] = value
        except ValueError:
            extra[key] = value
    if extra:
        out["extra"] = extra
    return out


def _our_sampler(label: str, schedule: str) -> str:
    name = A1111_SAMPLERS.get(label, label)
    if schedule.lower() == "karras" and f"{name}_karras" in SAMPLERS:
        return f"{name}_karras"
    return name


PNG_LEVEL = 1


def with_engine_marks(image: Image.Image, params: dict[str, object]) -> dict[str, object]:
    """`params` with what the engine marked on the image: offloaded weights (engine/budget.py) and
    the model's hash (a single-file checkpoint's, A1111's short form)."""
    for mark, key in (("easel_placement", "placement"), ("easel_model_hash", "model_hash")):
        value = image.info.get(mark)
        if isinstance(value, str) and key not in params:
            params = {**params, key: value}
    return params


def encode_png(image: Image.Image, params: dict[str, object]) -> bytes:
    """The image as PNG with `params` in an `easel` JSON chunk and an A1111 `parameters` chunk."""
    info = PngImagePlugin.PngInfo()
    params = with_engine_marks(image, params)
    info.add_text(EASEL_CHUNK, json.dumps(params, sort_keys=True, default=str))
    # add_text falls back to an iTXt chunk when the text is not Latin-1 (prompts often are not).
    info.add_text(A1111_CHUNK, a1111_text(dict(params)))
    if image.mode not in ("RGB", "RGBA", "L"):
        image = image.convert("RGB")
    buf = io.BytesIO()
    # zlib level 1, not PIL's 6: every job waits for its PNGs, and on a 512x512 picture level 1 took
    # 23 ms against 38 ms here, for a file about 12 % larger (the pixels are the same: PNG is lossless).
    image.save(buf, format="PNG", pnginfo=info, compress_level=PNG_LEVEL)
    return buf.getvalue()


def read_png_params(data: bytes) -> dict[str, object]:
    """Parameters stored in a PNG: ours when present, else A1111's parsed, else an empty dict."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            if im.format != "PNG":
                return {}
            text: dict[str, Any] = dict(getattr(im, "text", {}) or {})
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise invalid("invalid_image", f"The file is not a readable image ({exc}); upload a PNG.") from None
    if EASEL_CHUNK in text:
        try:
            params = json.loads(text[EASEL_CHUNK])
        except json.JSONDecodeError:
            params = None
        if isinstance(params, dict):
            return params
    if A1111_CHUNK in text:
        return dict(parse_a1111(str(text[A1111_CHUNK])))
    return {}


__all__ = ["a1111_text", "encode_png", "parse_a1111", "read_png_params"]
