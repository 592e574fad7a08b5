"""Image checks, cursors and the visibility rules, without a server."""

from __future__ import annotations

import io
import random
import struct
import zlib
from collections.abc import Iterator

import pytest
from PIL import Image

from easel.common.v1 import common_pb2
from services.common.errors import EaselError
from services.gallery import cursor
from services.gallery.access import Viewer, can_view
from services.gallery.imaging import Limits, configure_pillow, prepare_generated, prepare_upload

LIMITS = Limits(max_bytes=256 * 1024, max_pixels=1024 * 1024, thumb_size=64, thumb_quality=80)


@pytest.fixture(autouse=True)
def pillow_limit() -> Iterator[None]:
    before = Image.MAX_IMAGE_PIXELS
    configure_pillow(LIMITS.max_pixels)
    yield
    Image.MAX_IMAGE_PIXELS = before


def noise(size: tuple[int, int], fmt: str = "PNG", seed: int = 1, **save: object) -> bytes:
    rnd = random.Random(seed)
    im = Image.frombytes("RGB", size, rnd.randbytes(size[0] * size[1] * 3))
    out = io.BytesIO()
    im.save(out, fmt, **save)
    return out.getvalue()


def png_header(width: int, height: int) -> bytes:
    """A PNG that announces `width` x `height` pixels but holds almost nothing."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )


def code_of(data: bytes, purpose: str = "init") -> str:
    with pytest.raises(EaselError) as exc:
        prepare_upload(data, purpose, LIMITS)
    return exc.value.code


def test_a_real_decompression_bomb_is_refused_before_decoding() -> None:
    # 3000x3000 black pixels compress to a few kilobytes but would take 27 MB to decode.
    buf = io.BytesIO()
    Image.new("RGB", (3000, 3000)).save(buf, "PNG")
    assert len(buf.getvalue()) < LIMITS.max_bytes
    assert code_of(buf.getvalue()) == "decompression_bomb"
    assert code_of(png_header(100_000, 100_000)) == "decompression_bomb"


def test_each_bad_upload_gets_its_own_code() -> None:
    assert code_of(png_header(1500, 1000)) == "image_too_many_pixels"  # over 1x, under 2x the limit
    assert code_of(b"%!PS-Adobe-3.0 not an image at all" * 10) == "not_an_image"
    assert code_of(b"") == "not_an_image"
    assert code_of(noise((64, 64))[:200]) == "not_an_image"  # truncated
    assert code_of(b"\x89PNG\r\n\x1a\n" + b"garbage" * 20) == "not_an_image"
    assert code_of(noise((32, 32), "GIF")) == "unsupported_image_format"
    assert code_of(noise((32, 32), "BMP")) == "unsupported_image_format"
    assert code_of(b"<svg xmlns='http://www.w3.org/2000/svg'></svg>") == "unsupported_image_format"
    assert code_of(noise((400, 400))) == "image_too_large"  # ~480 KB of noise > 256 KB


def test_upload_is_reencoded_upright_without_metadata() -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees to display
    exif[0x013B] = "Secret Artist Name"
    data = noise((40, 20), "JPEG", exif=exif.tobytes(), quality=90)
    assert b"Secret Artist Name" in data
    prepared = prepare_upload(data, "init", LIMITS)
    assert b"Secret Artist Name" not in prepared.png
    im = Image.open(io.BytesIO(prepared.png))
    assert im.format == "PNG" and im.mode == "RGB"
    assert im.size == (20, 40) == (prepared.width, prepared.height)
    assert "exif" not in im.info and len(im.getexif()) == 0
    mask = prepare_upload(noise((16, 16), "WEBP"), "mask", LIMITS)
    assert Image.open(io.BytesIO(mask.png)).mode == "L"


def test_generated_png_is_kept_byte_for_byte_with_a_webp_thumbnail() -> None:
    data = noise((200, 100))
    prepared = prepare_generated(data, LIMITS)
    assert prepared.png == data and (prepared.width, prepared.height) == (200, 100)
    assert prepared.original_key == f"sha256/{prepared.sha256[:2]}/{prepared.sha256}.png"
    thumb = Image.open(io.BytesIO(prepared.thumb))
    assert thumb.format == "WEBP" and thumb.size == (64, 32)
    with pytest.raises(EaselError) as exc:
        prepare_generated(noise((8, 8), "JPEG"), LIMITS)
    assert exc.value.code == "not_a_png"


def test_cursor_round_trip_and_tampering() -> None:
    token = cursor.encode("mine:", [1_700_000_000_123_456, "3f1c0d9e-8a4b-4c7e-9d2f-0a1b2c3d4e5f"])
    values, image_id = cursor.decode_with_id(token, "mine:", (int,))
    assert values == [1_700_000_000_123_456] and str(image_id).startswith("3f1c0d9e")
    ts = cursor.from_micros(1_700_000_000_123_456)
    assert cursor.micros(ts) == 1_700_000_000_123_456
    for bad, listing in [
        (token, "public:newest"),
        ("not base64!", "mine:"),
        (token[:-4], "mine:"),
        ("", "mine:"),
    ]:
        with pytest.raises(EaselError) as exc:
            cursor.decode_with_id(bad, listing, (int,))
        assert exc.value.code == "invalid_cursor"


OWNER = Viewer("u-owner", "owner", False)
OTHER = Viewer("u-other", "other", False)
ANON = Viewer.of(common_pb2.Actor())
ADMIN = Viewer.of(common_pb2.Actor(user_id="u-admin", role="admin"))


@pytest.mark.parametrize(
    ("viewer", "token", "expected"),
    [
        (OWNER, False, {"private": True, "unlisted": True, "public": True}),
        (OTHER, False, {"private": False, "unlisted": False, "public": True}),
        (ANON, False, {"private": False, "unlisted": False, "public": True}),
        (ANON, True, {"private": False, "unlisted": True, "public": True}),
        (ADMIN, False, {"private": True, "unlisted": True, "public": True}),
    ],
)
def test_visibility_rules(viewer: Viewer, token: bool, expected: dict[str, bool]) -> None:
    for visibility, allowed in expected.items():
        assert can_view(viewer, "u-owner", visibility, False, token) is allowed, visibility
        # Hidden images are for the owner and admins only, whatever the visibility.
        assert can_view(viewer, "u-owner", visibility, True, token) is (viewer in (OWNER, ADMIN))


def test_a_role_without_a_user_is_not_an_admin() -> None:
    assert not Viewer.of(common_pb2.Actor(role="admin")).is_admin
