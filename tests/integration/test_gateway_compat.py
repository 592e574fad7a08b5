"""`POST /api/v1/edits` and the OpenAI- and AUTOMATIC1111-compatible APIs over the whole real stack.

One stack for the module (auth, gallery, inference api and worker, its own NATS and database); the
official `openai` client and the `webuiapi` client talk to it unchanged. Jobs use the tiny model at
64x64 with 2 steps. Where a mask is involved the test checks pixels: outside the mask the result
must be the input exactly, which proves which part of the mask means "repaint".
"""

from __future__ import annotations

import base64
import io
import json
import os
import threading
import time
import uuid
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import openai
import pytest
import requests
import webuiapi
from PIL import Image

from services.gateway import csrf
from services.local.stack import Stack
from tests.stacks import isolated_stack

pytestmark = pytest.mark.timeout(180)

PASSWORD = "correct horse battery staple"
COLOR = (20, 120, 200)
SIZE = 64
TERMINAL = ("completed", "failed", "cancelled")


# --- the stack and its accounts --------------------------------------------------------------------


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, postgres_url: str, models_dir: Path) -> Iterator[Stack]:
    with isolated_stack(tmp_path_factory, postgres_url, models_dir, "compat") as s:
        yield s


@dataclass
class Account:
    base: str
    username: str
    token: str = ""
    key: str = ""
    readonly_key: str = ""

    def auth(self, credential: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {credential or self.key}"}


def make_account(base: str, prefix: str, keys: bool = True) -> Account:
    """Registers and logs in with plain requests (no cookie jar: every call says who it is)."""
    acct = Account(base, f"{prefix}{uuid.uuid4().hex[:8]}")
    resp = requests.post(
        f"{base}/api/v1/auth/register",
        json={"username": acct.username, "email": f"{acct.username}@example.com", "password": PASSWORD},
        timeout=30,
    )
    assert resp.status_code == 201, resp.text
    if not keys:
        return acct
    resp = requests.post(
        f"{base}/api/v1/auth/login", json={"username": acct.username, "password": PASSWORD}, timeout=30
    )
    assert resp.status_code == 200, resp.text
    acct.token = resp.json()["token"]
    for attr, body in (
        ("key", {"name": "compat"}),
        ("readonly_key", {"name": "ro", "scopes": ["images:read"]}),
    ):
        resp = requests.post(f"{base}/api/v1/keys", json=body, headers=acct.auth(acct.token), timeout=30)
        assert resp.status_code == 201, resp.text
        setattr(acct, attr, resp.json()["key"])
    return acct


@pytest.fixture(scope="module")
def alice(stack: Stack) -> Account:
    return make_account(stack.gateway_url, "alice")


@pytest.fixture(scope="module")
def bob(stack: Stack) -> Account:
    return make_account(stack.gateway_url, "bob")


# --- helpers -------------------------------------------------------------------------------------


def png(im: Image.Image) -> bytes:
    out = io.BytesIO()
    im.save(out, "PNG")
    return out.getvalue()


def decode(data: bytes) -> Image.Image:
    im = Image.open(io.BytesIO(data))
    im.load()
    return im


def solid(mode: str = "RGB") -> Image.Image:
    return Image.new(mode, (SIZE, SIZE), COLOR if mode == "RGB" else (*COLOR, 255))


def left_half_white() -> Image.Image:
    """Our mask convention: white = repaint (the left half), black = keep (the right half)."""
    mask = Image.new("L", (SIZE, SIZE), 0)
    mask.paste(255, (0, 0, SIZE // 2, SIZE))
    return mask


def right_half_kept(im: Image.Image) -> bool:
    """True when every pixel of the right half is exactly the input colour."""
    rgb = im.convert("RGB")
    return {rgb.getpixel((x, y)) for x in range(SIZE // 2, SIZE) for y in range(SIZE)} == {COLOR}


def wait_job(acct: Account, job_id: str, timeout: float = 90) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        resp = requests.get(f"{acct.base}/api/v1/jobs/{job_id}", headers=acct.auth(), timeout=30)
        assert resp.status_code == 200, resp.text
        job: dict[str, Any] = resp.json()
        if job["status"] in TERMINAL:
            return job
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} did not end within {timeout}s")


def download(acct: Account, url: str) -> Image.Image:
    resp = requests.get(url, headers=acct.auth(), timeout=30)
    assert resp.status_code == 200, resp.text
    return decode(resp.content)


def gallery_ids(acct: Account) -> set[str]:
    resp = requests.get(f"{acct.base}/api/v1/images?limit=100", headers=acct.auth(), timeout=30)
    assert resp.status_code == 200, resp.text
    return {item["id"] for item in resp.json()["items"]}


def post_edit(acct: Account, headers: dict[str, str] | None = None, **kwargs: Any) -> requests.Response:
    return requests.post(
        f"{acct.base}/api/v1/edits", headers=acct.auth() if headers is None else headers, timeout=60, **kwargs
    )


# --- POST /api/v1/edits --------------------------------------------------------------------------


def test_edit_multipart_inpaint_repaints_only_the_white_area(alice: Account) -> None:
    files = {
        "image": ("photo.png", png(solid()), "image/png"),
        "mask": ("mask.png", png(left_half_white()), "image/png"),
    }
    form = {"kind": "inpaint", "prompt": "a red balloon", "steps": "2", "seed": "5", "strength": "1"}
    resp = post_edit(alice, files=files, data=form)
    assert resp.status_code == 202, resp.text
    job = resp.json()["job"]
    assert resp.headers["Location"] == f"/api/v1/jobs/{job['id']}"
    assert job["kind"] == "inpaint" and job["status"] in ("queued", "running", "completed")
    done = wait_job(alice, job["id"])
    assert done["status"] == "completed", done
    params = done["params"]
    assert params["seed"] == 5 and params["init_image_id"] and params["mask_image_id"]
    upload = requests.get(
        f"{alice.base}/api/v1/images/{params['init_image_id']}", headers=alice.auth(), timeout=30
    )
    assert upload.status_code == 200 and upload.json()["title"] == "photo.png"
    # The uploaded picture is listed in the caller's gallery (kind upload); the mask is an input of the
    # job, not a picture, so the listing leaves it out (it is still there by id).
    listed = gallery_ids(alice)
    assert params["init_image_id"] in listed and params["mask_image_id"] not in listed
    mask = requests.get(
        f"{alice.base}/api/v1/images/{params['mask_image_id']}", headers=alice.auth(), timeout=30
    )
    assert mask.status_code == 200
    result = download(alice, done["images"][0]["url"])
    assert result.size == (SIZE, SIZE)
    assert right_half_kept(result)
    assert not right_half_kept(result.transpose(Image.Transpose.FLIP_LEFT_RIGHT))  # the left half changed


def test_edit_json_upscale_and_variation(alice: Account) -> None:
    # A source in the gallery with a prompt of its own.
    resp = requests.post(
        f"{alice.base}/api/v1/generations",
        json={"prompt": "a quiet harbour", "width": SIZE, "height": SIZE, "steps": 2, "seed": 21},
        headers=alice.auth(),
        timeout=30,
    )
    assert resp.status_code == 202, resp.text
    source = wait_job(alice, resp.json()["job"]["id"])
    assert source["status"] == "completed", source
    source_id = source["images"][0]["id"]

    upscale = post_edit(alice, json={"kind": "upscale", "image_id": source_id, "steps": 2})
    variation = post_edit(
        alice,
        json={
            "kind": "variation",
            "image": "data:image/png;base64," + base64.b64encode(png(solid())).decode(),
            "steps": 2,
            "n": 2,
            "seed": 7,
        },
    )
    assert upscale.status_code == 202, upscale.text
    assert variation.status_code == 202, variation.text

    up = wait_job(alice, upscale.json()["job"]["id"])
    assert up["status"] == "completed", up
    assert up["params"]["prompt"] == "a quiet harbour"  # no prompt given: the source's
    assert download(alice, up["images"][0]["url"]).size == (2 * SIZE, 2 * SIZE)

    var = wait_job(alice, variation.json()["job"]["id"])
    assert var["status"] == "completed", var
    assert [img["index"] for img in var["images"]] == [0, 1]
    assert all(download(alice, img["url"]).size == (SIZE, SIZE) for img in var["images"])


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


EDIT_ERRORS: list[tuple[str, dict[str, Any], int, str, str | None]] = [
    ("no image", {"kind": "img2img", "prompt": "x"}, 400, "missing_image", "image"),
    ("no kind", {"image": _b64(png(solid())), "prompt": "x"}, 400, "missing_field", "kind"),
    ("bad kind", {"kind": "paint", "image": _b64(png(solid())), "prompt": "x"}, 400, "invalid_kind", "kind"),
    (
        "inpaint no mask",
        {"kind": "inpaint", "image": _b64(png(solid())), "prompt": "x"},
        400,
        "missing_mask",
        "mask",
    ),
    (
        "mask without inpaint",
        {"kind": "img2img", "image": _b64(png(solid())), "mask": _b64(png(left_half_white())), "prompt": "x"},
        400,
        "unexpected_mask",
        "mask",
    ),
    (
        "image and image_id",
        {"kind": "img2img", "image": _b64(png(solid())), "image_id": "x", "prompt": "x"},
        400,
        "conflicting_fields",
        "image",
    ),
    ("not base64", {"kind": "img2img", "image": "%%%", "prompt": "x"}, 400, "invalid_base64", "image"),
    (
        "not an image",
        {"kind": "img2img", "image": _b64(b"hello world"), "prompt": "x"},
        400,
        "not_an_image",
        "image",
    ),
    (
        "mask not an image",
        {"kind": "inpaint", "image": _b64(png(solid())), "mask": _b64(b"nope"), "prompt": "x"},
        400,
        "not_an_image",
        "mask",
    ),
    (
        "unknown image_id",
        {"kind": "img2img", "image_id": str(uuid.uuid4()), "prompt": "x"},
        404,
        "image_not_found",
        "image_id",
    ),
    (
        "strength out of range",
        {"kind": "img2img", "image": _b64(png(solid())), "prompt": "x", "strength": 2},
        400,
        "invalid_field",
        "strength",
    ),
    (
        "img2img needs a prompt",
        {"kind": "img2img", "image": _b64(png(solid()))},
        400,
        "missing_field",
        "prompt",
    ),
]


@pytest.mark.parametrize(
    ("body", "status", "code", "field"),
    [case[1:] for case in EDIT_ERRORS],
    ids=[case[0] for case in EDIT_ERRORS],
)
def test_edit_errors_name_the_field(
    alice: Account, body: dict[str, Any], status: int, code: str, field: str | None
) -> None:
    resp = post_edit(alice, json=body)
    assert resp.status_code == status, resp.text
    error = resp.json()["error"]
    assert error["code"] == code and error.get("field") == field, error
    assert error["message"]


def test_edit_auth_scope_and_form_checks(alice: Account) -> None:
    files = {"image": ("a.png", png(solid()), "image/png")}
    resp = post_edit(alice, headers={}, files=files, data={"kind": "img2img", "prompt": "x"})
    assert resp.status_code == 401 and resp.json()["error"]["code"] == "unauthenticated"
    resp = post_edit(
        alice, headers=alice.auth(alice.readonly_key), files=files, data={"kind": "img2img", "prompt": "x"}
    )
    assert resp.status_code == 403 and resp.json()["error"]["code"] == "insufficient_scope"
    resp = post_edit(alice, files=files, data={"kind": "img2img", "prompt": "x", "steps": "two"})
    assert resp.status_code == 400 and resp.json()["error"]["field"] == "steps"
    before = gallery_ids(alice)
    resp = post_edit(
        alice,
        files={**files, "mask": ("m.png", b"not a mask", "image/png")},
        data={"kind": "inpaint", "prompt": "x"},
    )
    assert resp.status_code == 400 and resp.json()["error"]["field"] == "mask", resp.text
    assert gallery_ids(alice) == before  # the image that did upload was dropped again
    gif = {"image": ("a.gif", b"GIF89a\x01\x00\x01\x00\x00\x00\x00;", "image/gif")}
    resp = post_edit(alice, files=gif, data={"kind": "img2img", "prompt": "x"})
    assert resp.status_code == 400, resp.text
    assert resp.json()["error"]["code"] in ("unsupported_image_format", "not_an_image")
    resp = post_edit(
        alice,
        headers={**alice.auth(), "Idempotency-Key": "k1"},
        files=files,
        data={"kind": "img2img", "prompt": "x"},
    )
    assert resp.status_code == 400 and resp.json()["error"]["code"] == "idempotency_key_with_upload"
    resp = post_edit(
        alice,
        headers={**alice.auth(), "Content-Type": "multipart/form-data; boundary=nothere"},
        data=b"garbage",
    )
    assert resp.status_code == 400 and resp.json()["error"]["code"] == "invalid_form", resp.text
    control_char = b'--b\r\nContent-Disposition: form-data; name="\x06"\r\n\r\nx\r\n--b--\r\n'
    resp = post_edit(
        alice, headers={**alice.auth(), "Content-Type": "multipart/form-data; boundary=b"}, data=control_char
    )
    assert resp.status_code == 400 and resp.json()["error"]["code"] == "invalid_form", resp.text


def test_edit_takes_uploads_bigger_than_the_json_limit(alice: Account) -> None:
    # Noise does not compress: well over the 1 MiB default limit of ordinary API bodies.
    noise = png(Image.frombytes("RGB", (720, 720), os.urandom(720 * 720 * 3)))
    assert len(noise) > 1024 * 1024
    files = {"image": ("noise.png", noise, "image/png")}
    before = gallery_ids(alice)
    # steps is out of range, so inference refuses the job after the upload: no 413, no job to run.
    resp = post_edit(alice, files=files, data={"kind": "img2img", "prompt": "x", "steps": "1000"})
    assert resp.status_code == 400, resp.text
    assert resp.json()["error"]["code"] == "invalid_steps"
    # The refused job left no upload behind.
    assert gallery_ids(alice) == before


def test_edit_with_cookie_needs_the_csrf_token(alice: Account) -> None:
    cookie = {"Cookie": f"easel_session={alice.token}"}
    files = {"image": ("a.png", png(solid()), "image/png")}
    form = {"kind": "img2img", "prompt": "x", "steps": "1000"}
    resp = post_edit(alice, headers=cookie, files=files, data=form)
    assert resp.status_code == 403 and resp.json()["error"]["code"] == "csrf_failed"
    form["csrf_token"] = csrf.token_for_session(alice.token)
    resp = post_edit(alice, headers=cookie, files=files, data=form)
    # Past the CSRF check (inference then refuses the steps).
    assert resp.status_code == 400 and resp.json()["error"]["code"] == "invalid_steps", resp.text


# --- the OpenAI-compatible API -------------------------------------------------------------------


def openai_client(acct: Account, key: str | None = None) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{acct.base}/v1", api_key=key or acct.key, max_retries=0, timeout=120)


def test_openai_generate_b64_and_url(alice: Account) -> None:
    client = openai_client(alice)
    res = client.images.generate(
        prompt="a lighthouse at dusk", size=f"{SIZE}x{SIZE}", n=2, extra_body={"seed": 11, "steps": 2}
    )
    assert res.created > 0 and res.data is not None and len(res.data) == 2
    for item in res.data:
        assert item.b64_json and item.url is None
        assert decode(base64.b64decode(item.b64_json)).size == (SIZE, SIZE)

    res = client.images.generate(
        prompt="a lighthouse at dawn", size=f"{SIZE}x{SIZE}", response_format="url", extra_body={"steps": 2}
    )
    assert res.data is not None and len(res.data) == 1 and res.data[0].url
    url = res.data[0].url
    assert url.startswith(alice.base + "/v1/images/files/") and ".png?" in url
    # Signed and expiring, as OpenAI's are: fetched without any credential.
    plain = requests.get(url, timeout=30)
    assert plain.status_code == 200 and plain.headers["Content-Type"] == "image/png"
    assert decode(plain.content).size == (SIZE, SIZE)
    assert "max-age=" in plain.headers["Cache-Control"]
    # Altering any part of it breaks the signature.
    image_id = urlparse(url).path.rsplit("/", 1)[-1].split(".")[0]
    for forged in (
        url.replace(".png?", ".webp?"),
        url.replace("expires=", "expires=9"),
        url.replace(image_id, str(uuid.uuid4())),
        url.split("&sig=")[0],
    ):
        resp = requests.get(forged, timeout=30)
        assert resp.status_code == 403 and resp.json()["error"]["code"] == "invalid_signature", forged


def test_openai_edit_converts_a_transparent_mask(alice: Account) -> None:
    # OpenAI's convention: fully transparent mask pixels (the left half) are the area to edit.
    mask = Image.new("RGBA", (SIZE, SIZE), (0, 0, 0, 255))
    mask.paste((0, 0, 0, 0), (0, 0, SIZE // 2, SIZE))
    res = openai_client(alice).images.edit(
        image=("photo.png", png(solid()), "image/png"),
        mask=("mask.png", png(mask), "image/png"),
        prompt="a cat",
        size=f"{SIZE}x{SIZE}",
        extra_body={"steps": 2, "strength": 1.0},
    )
    assert res.data is not None and res.data[0].b64_json
    result = decode(base64.b64decode(res.data[0].b64_json))
    assert result.size == (SIZE, SIZE)
    assert right_half_kept(result)
    assert not right_half_kept(result.transpose(Image.Transpose.FLIP_LEFT_RIGHT))


def test_openai_edit_without_mask_and_variation(alice: Account) -> None:
    client = openai_client(alice)
    res = client.images.edit(
        image=("photo.png", png(solid()), "image/png"), prompt="a cat", extra_body={"steps": 2}
    )
    assert res.data is not None and decode(base64.b64decode(res.data[0].b64_json or "")).size == (SIZE, SIZE)
    jobs = requests.get(f"{alice.base}/api/v1/jobs?limit=1", headers=alice.auth(), timeout=30).json()["items"]
    assert jobs[0]["kind"] == "img2img"  # opaque image, no mask: the whole picture is reworked

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # retired at OpenAI, alive here
        res = client.images.create_variation(
            image=("photo.png", png(solid()), "image/png"), n=1, extra_body={"steps": 2}
        )
    assert res.data is not None and len(res.data) == 1
    assert decode(base64.b64decode(res.data[0].b64_json or "")).size == (SIZE, SIZE)
    jobs = requests.get(f"{alice.base}/api/v1/jobs?limit=1", headers=alice.auth(), timeout=30).json()["items"]
    assert jobs[0]["kind"] == "variation"


def test_openai_models_with_key_and_session_token(alice: Account) -> None:
    ids = [m.id for m in openai_client(alice).models.list()]
    assert "tiny-sd" in ids
    assert [m.id for m in openai_client(alice, alice.token).models.list()] == ids
    assert openai_client(alice).models.retrieve("tiny-sd").owned_by == "easel"


def test_openai_errors_surface_as_client_exceptions(alice: Account) -> None:
    with pytest.raises(openai.AuthenticationError) as auth_error:
        openai_client(alice, "esk_not_a_real_key").models.list()
    assert auth_error.value.status_code == 401 and auth_error.value.code == "invalid_api_key"

    with pytest.raises(openai.BadRequestError) as bad_size:
        openai_client(alice).images.generate(prompt="x", size="huge")
    assert bad_size.value.param == "size" and bad_size.value.code == "invalid_size"

    with pytest.raises(openai.BadRequestError) as too_big:
        openai_client(alice).images.generate(prompt="x", size="1000x1000")
    assert too_big.value.param == "size"

    with pytest.raises(openai.PermissionDeniedError) as scope:
        openai_client(alice, alice.readonly_key).images.generate(prompt="x")
    assert scope.value.code == "insufficient_scope"

    with pytest.raises(openai.NotFoundError):
        openai_client(alice).images.generate(prompt="x", model="no-such-model")

    opaque_mask = ("mask.png", png(Image.new("L", (SIZE, SIZE), 0)), "image/png")
    with pytest.raises(openai.BadRequestError) as no_alpha:
        openai_client(alice).images.edit(
            image=("a.png", png(solid()), "image/png"), mask=opaque_mask, prompt="x"
        )
    assert no_alpha.value.param == "mask" and no_alpha.value.code == "invalid_mask"
    small_mask = ("mask.png", png(Image.new("RGBA", (8, 8))), "image/png")
    with pytest.raises(openai.BadRequestError) as mismatch:
        openai_client(alice).images.edit(
            image=("a.png", png(solid()), "image/png"), mask=small_mask, prompt="x"
        )
    assert mismatch.value.code == "mask_size_mismatch"
    with pytest.raises(openai.BadRequestError) as not_image:
        openai_client(alice).images.edit(image=("a.png", b"plain text", "image/png"), prompt="x")
    assert not_image.value.param == "image" and not_image.value.code == "not_an_image"

    resp = requests.post(
        f"{alice.base}/v1/images/edits", json={"prompt": "x"}, headers=alice.auth(), timeout=30
    )
    assert resp.status_code == 400 and resp.json()["error"]["code"] == "invalid_content_type"
    resp = requests.post(f"{alice.base}/v1/images/generations", json={"prompt": "x"}, timeout=30)
    assert resp.status_code == 401
    assert resp.json() == {
        "error": {
            "message": resp.json()["error"]["message"],
            "type": "invalid_request_error",
            "param": None,
            "code": "missing_api_key",
        }
    }


# --- the AUTOMATIC1111-compatible API ------------------------------------------------------------


def webui(acct: Account, password: str = PASSWORD) -> webuiapi.WebUIApi:
    parsed = urlparse(acct.base)
    api = webuiapi.WebUIApi(host=parsed.hostname, port=parsed.port, use_https=False)
    api.set_auth(acct.username, password)
    return api


def test_a1111_txt2img_with_password(alice: Account) -> None:
    result = webui(alice).txt2img(
        prompt="a red fox", width=SIZE, height=SIZE, steps=2, seed=4321, sampler_name="Euler a", batch_size=2
    )
    assert len(result.images) == 2
    assert result.image.size == (SIZE, SIZE)
    assert result.info["seed"] == 4321 and result.info["all_seeds"] == [4321, 4322]
    assert result.info["sampler_name"] == "Euler a" and result.info["steps"] == 2
    assert result.info["sd_model_name"] == "tiny-sd"
    assert "Seed: 4321" in result.info["infotexts"][0]
    assert result.parameters["prompt"] == "a red fox"


def test_a1111_img2img_with_mask_and_api_key(alice: Account) -> None:
    api = webui(alice, alice.key)  # username + API key as the password
    result = api.img2img(
        images=[solid()],
        mask_image=left_half_white(),
        prompt="a boat",
        width=SIZE,
        height=SIZE,
        steps=2,
        seed=99,
        denoising_strength=1.0,
        sampler_name="DPM++ 2M",
        scheduler="karras",
    )
    assert result.image.size == (SIZE, SIZE)
    assert result.info["seed"] == 99 and result.info["denoising_strength"] == 1.0
    assert result.info["sampler_name"] == "DPM++ 2M Karras"
    assert right_half_kept(result.image)
    assert result.parameters["init_images"] is None  # as the web UI: not echoed unless asked

    # inpainting_mask_invert: the same mask now keeps the left half.
    resp = requests.post(
        f"{alice.base}/sdapi/v1/img2img",
        auth=(alice.username, PASSWORD),
        json={
            "init_images": [_b64(png(solid()))],
            "mask": _b64(png(left_half_white())),
            "inpainting_mask_invert": 1,
            "prompt": "a boat",
            "width": SIZE,
            "height": SIZE,
            "steps": 2,
            "denoising_strength": 1.0,
        },
        timeout=120,
    )
    assert resp.status_code == 200, resp.text
    inverted = decode(base64.b64decode(resp.json()["images"][0]))
    assert right_half_kept(inverted.transpose(Image.Transpose.FLIP_LEFT_RIGHT))
    assert json.loads(resp.json()["info"])["is_using_inpainting_conditioning"] is True


def test_a1111_models_and_samplers(alice: Account) -> None:
    api = webui(alice)
    assert "tiny-sd" in [m["title"] for m in api.get_sd_models()]
    names = [s["name"] for s in api.get_samplers()]
    assert "Euler a" in names and "DPM++ 2M" in names
    assert [s["name"] for s in api.get_schedulers()] == ["automatic", "karras"]
    assert api.get_options()["sd_model_checkpoint"] == "tiny-sd"


def test_a1111_auth_and_validation_errors(alice: Account) -> None:
    sdapi = f"{alice.base}/sdapi/v1"
    resp = requests.get(f"{sdapi}/progress", timeout=30)
    assert resp.status_code == 401 and resp.headers["WWW-Authenticate"] == "Basic"
    assert resp.json()["detail"] == "Not authenticated" and resp.json()["error"] == "HTTPException"
    resp = requests.get(f"{sdapi}/sd-models", auth=(alice.username, "not the password"), timeout=30)
    assert resp.status_code == 401
    resp = requests.get(f"{sdapi}/sd-models", auth=(alice.username, alice.readonly_key), timeout=30)
    assert resp.status_code == 403
    resp = requests.get(f"{sdapi}/sd-models", headers=alice.auth(), timeout=30)  # bearer works too
    assert resp.status_code == 200

    def validation(body: dict[str, Any]) -> list[Any]:
        resp = requests.post(f"{sdapi}/txt2img", auth=(alice.username, PASSWORD), json=body, timeout=30)
        assert resp.status_code == 422, resp.text
        detail: list[Any] = resp.json()["detail"]
        return detail

    assert validation({"prompt": "x", "steps": "many"})[0]["loc"] == ["body", "steps"]
    assert validation({"prompt": "x", "sampler_name": "Nope"})[0]["loc"] == ["body", "sampler_name"]
    assert validation({"prompt": "x", "width": 1000})[0]["loc"] == ["body", "width"]
    assert validation({"prompt": "x", "cfg_scale": 99})[0]["loc"] == ["body", "cfg_scale"]
    assert validation({"prompt": "x", "enable_hr": True})[0]["loc"] == ["body", "enable_hr"]
    assert validation({"prompt": "x", "batch_size": 4, "n_iter": 4})[0]["loc"] == ["body", "batch_size"]
    resp = requests.post(
        f"{sdapi}/txt2img",
        auth=(alice.username, PASSWORD),
        json={"prompt": "x", "override_settings": {"sd_model_checkpoint": "nope.safetensors [abc123]"}},
        timeout=30,
    )
    assert resp.status_code == 404 and resp.json()["error"] == "HTTPException", resp.text
    assert "nope" in resp.json()["detail"] and resp.json()["errors"].startswith("404: ")
    resp = requests.post(
        f"{sdapi}/img2img",
        auth=(alice.username, PASSWORD),
        json={"prompt": "x", "init_images": []},
        timeout=30,
    )
    assert resp.status_code == 422 and resp.json()["detail"][0]["loc"] == ["body", "init_images"]


def test_a1111_basic_password_is_throttled_like_a_login(stack: Stack) -> None:
    carol = make_account(stack.gateway_url, "carol", keys=False)
    url = f"{carol.base}/sdapi/v1/sd-models"
    statuses = [
        requests.get(url, auth=(carol.username, f"wrong password {i}"), timeout=30).status_code
        for i in range(5)
    ]
    assert statuses == [401] * 5
    locked = requests.get(url, auth=(carol.username, PASSWORD), timeout=30)
    assert locked.status_code == 429 and int(locked.headers["Retry-After"]) > 0
    assert locked.json()["error"] == "HTTPException"


def test_a1111_progress_and_interrupt_touch_only_the_callers_job(alice: Account, bob: Account) -> None:
    sdapi = f"{alice.base}/sdapi/v1"
    as_alice, as_bob = (alice.username, PASSWORD), (bob.username, PASSWORD)
    answer: dict[str, Any] = {}

    def long_job() -> None:
        body: dict[str, Any] = {"prompt": "a long one", "width": 256, "height": 256, "steps": 50, "seed": -1}
        resp = requests.post(f"{sdapi}/txt2img", auth=as_alice, json=body, timeout=150)
        answer["status"], answer["body"] = resp.status_code, resp.json()

    worker = threading.Thread(target=long_job)
    worker.start()
    try:
        deadline = time.monotonic() + 60
        mine: dict[str, Any] = {}
        while time.monotonic() < deadline and "status" not in answer:
            mine = requests.get(f"{sdapi}/progress", auth=as_alice, timeout=30).json()
            if mine["state"]["job_count"] >= 1:
                break
            time.sleep(0.1)
        assert mine["state"]["job_count"] == 1, (mine, answer)
        job_id = mine["state"]["job"]

        # Bob sees nothing of it and cannot stop it.
        theirs = requests.get(f"{sdapi}/progress", auth=as_bob, timeout=30).json()
        assert (
            theirs["state"]["job_count"] == 0 and theirs["progress"] == 0 and theirs["current_image"] is None
        )
        resp = requests.post(f"{sdapi}/interrupt", auth=as_bob, timeout=30)
        assert resp.status_code == 200 and resp.json() == {}
        still = requests.get(f"{sdapi}/progress", auth=as_alice, timeout=30).json()
        assert still["state"]["job"] == job_id and still["state"]["job_count"] == 1
        assert still["state"]["sampling_steps"] == 50 and 0 <= still["progress"] < 1

        resp = requests.post(f"{sdapi}/interrupt", auth=as_alice, timeout=30)
        assert resp.status_code == 200
    finally:
        worker.join(timeout=150)
    assert answer["status"] == 200, answer
    assert answer["body"]["images"] == []  # interrupted before any image was made
    info = json.loads(answer["body"]["info"])
    assert info["interrupted"] is True and info["job_id"] == job_id
    job = requests.get(f"{alice.base}/api/v1/jobs/{job_id}", headers=alice.auth(), timeout=30).json()
    assert job["status"] == "cancelled"
    after = requests.get(f"{sdapi}/progress", auth=as_alice, timeout=30).json()
    assert after["state"]["job_count"] == 0
