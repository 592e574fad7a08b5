"""Real clients of the A1111- and OpenAI-compatible APIs, replayed against the whole stack.

Each test sends what one client's own source sends (method, path, headers, body, built as that
source builds them; the file is cited in the test's docstring) and checks what that source reads
from the answers. The credential is always an Easel API key: as the password of HTTP Basic (the
A1111 clients), in the URL (LibreChat's and Dify's A1111 tools, whose HTTP libraries turn
`http://user:key@host` into HTTP Basic), or as the bearer key (the OpenAI clients). The `openai` and
`webuiapi` packages run unchanged.

Deviations from the sources, each for the shared test machine: sizes are 64x64 and steps 2 where a
source hard-codes 1024x1024 and 10-50 steps (the bundled test models stop at 256x256).

One stack for the module; two bundled models (tiny-sd, the default, and tiny-sdxl) show the model
switch of each client, and a second user shows that A1111's server-wide options are per user here.
"""

from __future__ import annotations

import base64
import io
import json
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlparse

import httpx2 as httpx  # httpx's code, as the `openai` package here ships it; Dify uses httpx
import openai
import pytest
import requests
import webuiapi
from PIL import Image

from services.local.stack import Stack
from tests.stacks import isolated_stack

pytestmark = pytest.mark.timeout(240)

PASSWORD = "correct horse battery staple"
SIZE = 64
STEPS = 2


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, postgres_url: str, models_dir: Path) -> Iterator[Stack]:
    with isolated_stack(tmp_path_factory, postgres_url, models_dir, "clients") as s:
        yield s


@dataclass
class User:
    base: str
    username: str
    key: str

    @property
    def basic(self) -> str:
        """What A1111 clients put in their Authorization header for "user:key"."""
        return "Basic " + base64.b64encode(f"{self.username}:{self.key}".encode()).decode()

    @property
    def url_with_credentials(self) -> str:
        parsed = urlparse(self.base)
        return f"{parsed.scheme}://{self.username}:{self.key}@{parsed.netloc}"


def new_user(base: str, prefix: str) -> User:
    username = f"{prefix}{uuid.uuid4().hex[:8]}"
    resp = requests.post(
        f"{base}/api/v1/auth/register",
        json={"username": username, "email": f"{username}@example.com", "password": PASSWORD},
        timeout=30,
    )
    assert resp.status_code == 201, resp.text
    resp = requests.post(
        f"{base}/api/v1/auth/login", json={"username": username, "password": PASSWORD}, timeout=30
    )
    token = resp.json()["token"]
    resp = requests.post(
        f"{base}/api/v1/keys",
        json={"name": "client"},
        headers={"Authorization": f"Bearer {token}"},
        timeout=30,
    )
    assert resp.status_code == 201, resp.text
    return User(base, username, resp.json()["key"])


@pytest.fixture(scope="module")
def alice(stack: Stack) -> User:
    return new_user(stack.gateway_url, "alice")


@pytest.fixture(scope="module")
def bob(stack: Stack) -> User:
    return new_user(stack.gateway_url, "bob")


def image_of(b64: str) -> Image.Image:
    im = Image.open(io.BytesIO(base64.b64decode(b64)))
    im.load()
    return im


def png_bytes(color: tuple[int, int, int] = (20, 120, 200)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (SIZE, SIZE), color).save(out, "PNG")
    return out.getvalue()


def options_of(user: User) -> dict[str, Any]:
    resp = requests.get(f"{user.base}/sdapi/v1/options", headers={"Authorization": user.basic}, timeout=30)
    assert resp.status_code == 200, resp.text
    found: dict[str, Any] = resp.json()
    return found


# --- Open WebUI ----------------------------------------------------------------------------------


def test_open_webui_automatic1111_engine(alice: User, bob: User) -> None:
    """open-webui/open-webui backend/open_webui/routers/images.py, engine "automatic1111":
    get_automatic1111_api_auth (Basic of AUTOMATIC1111_API_AUTH "user:key"), verify_url (GET options,
    raise_for_status), get_models (GET sd-models -> id=title, name=model_name), set_image_model (GET
    options; if the model differs, POST the whole dict back with sd_model_checkpoint changed),
    get_image_model (GET options before every generation) and image_generations (POST txt2img
    {prompt, batch_size, width, height, steps, negative_prompt}; reads images[] and info)."""
    headers = {"authorization": alice.basic}
    base = alice.base
    assert requests.get(f"{base}/sdapi/v1/options", headers=headers, timeout=30).status_code == 200  # verify

    models = requests.get(f"{base}/sdapi/v1/sd-models", headers=headers, timeout=30).json()
    listed = [{"id": m["title"], "name": m["model_name"]} for m in models]
    assert {"id": "tiny-sdxl", "name": "tiny-sdxl"} in listed and {
        "id": "tiny-sd",
        "name": "tiny-sd",
    } in listed

    # set_image_model("tiny-sdxl"): the whole options dict goes back.
    options = requests.get(f"{base}/sdapi/v1/options", headers=headers, timeout=30).json()
    assert options["sd_model_checkpoint"] == "tiny-sd"
    options["sd_model_checkpoint"] = "tiny-sdxl"
    resp = requests.post(f"{base}/sdapi/v1/options", json=options, headers=headers, timeout=30)
    resp.raise_for_status()
    assert resp.json() is None

    # get_image_model, then the generation itself.
    model = requests.get(f"{base}/sdapi/v1/options", headers=headers, timeout=30).json()[
        "sd_model_checkpoint"
    ]
    assert model == "tiny-sdxl"
    data: dict[str, Any] = {
        "prompt": "a harbour at dawn",
        "batch_size": 2,
        "width": SIZE,
        "height": SIZE,
        "steps": STEPS,
    }
    data["negative_prompt"] = "blurry"
    res = requests.post(f"{base}/sdapi/v1/txt2img", json=data, headers=headers, timeout=120).json()
    assert len(res["images"]) == 2
    assert all(image_of(b64).size == (SIZE, SIZE) for b64 in res["images"])
    info = json.loads(res["info"])
    assert info["sd_model_name"] == "tiny-sdxl"  # the model alice chose, not the default

    # A1111 has one set of options per server; here bob's are his own.
    assert options_of(bob)["sd_model_checkpoint"] == "tiny-sd"
    res = requests.post(
        f"{base}/sdapi/v1/txt2img",
        json=data | {"batch_size": 1},
        headers={"authorization": bob.basic},
        timeout=120,
    ).json()
    assert json.loads(res["info"])["sd_model_name"] == "tiny-sd"


def _edit_file_item(data: bytes, param_name: str) -> tuple[str, tuple[str, bytes, str]]:
    # get_image_file_item: a uuid file name with the MIME type's extension.
    return (param_name, (f"{uuid.uuid4()}.png", data, "image/png"))


def test_open_webui_openai_engine(alice: User) -> None:
    """open-webui/open-webui backend/open_webui/routers/images.py, engine "openai":
    image_generations (POST {base}/images/generations with Bearer and Content-Type JSON, body
    {model, prompt, n, size} plus response_format b64_json unless the model matches
    IMAGE_URL_RESPONSE_MODELS_REGEX_PATTERN '^gpt-image'; reads data[].url, else data[].b64_json) and
    image_edits (multipart: model, prompt, n, size, response_format as text fields; one image as
    `image` or several as `image[]`, each from get_image_file_item)."""
    base = f"{alice.base}/v1"
    headers = {"Authorization": f"Bearer {alice.key}", "Content-Type": "application/json"}
    for model in ("dall-e-3", "gpt-image-1"):
        data: dict[str, Any] = {"model": model, "prompt": "a red kite", "n": 1, "size": f"{SIZE}x{SIZE}"}
        if not model.startswith("gpt-image"):
            data["response_format"] = "b64_json"
        res = requests.post(f"{base}/images/generations", json=data, headers=headers, timeout=120)
        res.raise_for_status()
        image = res.json()["data"][0]
        assert image.get("url") is None
        assert image_of(image["b64_json"]).size == (SIZE, SIZE)

    upload_headers = {"Authorization": f"Bearer {alice.key}"}
    for images in ([png_bytes()], [png_bytes(), png_bytes((200, 30, 30))]):
        fields = {"model": "gpt-image-1", "prompt": "make it night", "n": "1", "size": f"{SIZE}x{SIZE}"}
        if len(images) == 1:
            files = [_edit_file_item(images[0], "image")]
        else:
            files = [_edit_file_item(data, "image[]") for data in images]
        res = requests.post(
            f"{base}/images/edits", data=fields, files=files, headers=upload_headers, timeout=120
        )
        assert res.status_code == 200, res.text
        out = res.json()["data"]
        assert len(out) == 1 and image_of(out[0]["b64_json"]).size == (SIZE, SIZE)


# --- SillyTavern ---------------------------------------------------------------------------------


def _st_get(user: User, path: str) -> requests.Response:
    # Every call of src/endpoints/stable-diffusion.js: a URL built from the saved one, and
    # 'Authorization': getBasicAuthHeader(request.body.auth).
    return requests.get(f"{user.base}{path}", headers={"Authorization": user.basic}, timeout=30)


def test_sillytavern_extension(alice: User) -> None:
    """SillyTavern/SillyTavern src/endpoints/stable-diffusion.js (ping, upscalers with
    latent-upscale-modes, vaes with sd-modules, samplers, schedulers, models, get-model, set-model
    with its progress polling, generate) with the body public/scripts/extensions/stable-diffusion/
    index.js generateAutoImage builds (its own url and auth included, sent on to txt2img as is)."""
    assert _st_get(alice, "/sdapi/v1/options").ok  # ping

    upscalers = [x["name"] for x in _st_get(alice, "/sdapi/v1/upscalers").json()]
    latent = [x["name"] for x in _st_get(alice, "/sdapi/v1/latent-upscale-modes").json()]
    upscalers[1:1] = latent  # "0 = None, then Latent Upscalers, then Upscalers"
    assert upscalers[0] == "None"

    # vaes: Promise.allSettled over sd-vae and sd-modules; the first fulfilled one must be an array.
    vaes = [r for r in (_st_get(alice, "/sdapi/v1/sd-vae"), _st_get(alice, "/sdapi/v1/sd-modules")) if r.ok]
    assert vaes and isinstance(vaes[0].json(), list)
    names = [x["model_name"] for x in vaes[0].json()]
    vae = ["Automatic", *names][0]  # loadAutoVaes puts its placeholder first

    samplers = [x["name"] for x in _st_get(alice, "/sdapi/v1/samplers").json()]
    schedulers = [x["name"] for x in _st_get(alice, "/sdapi/v1/schedulers").json()]
    assert "DPM++ 2M" in samplers and "karras" in schedulers
    models = [{"value": x["title"], "text": x["title"]} for x in _st_get(alice, "/sdapi/v1/sd-models").json()]
    assert {"value": "tiny-sd", "text": "tiny-sd"} in models
    current = _st_get(alice, "/sdapi/v1/options").json()["sd_model_checkpoint"]  # get-model
    assert current in [m["value"] for m in models]

    # set-model: POST {sd_model_checkpoint}, then poll progress until progress 0 and job_count 0.
    resp = requests.post(
        f"{alice.base}/sdapi/v1/options",
        data=json.dumps({"sd_model_checkpoint": "tiny-sd"}),
        headers={"Content-Type": "application/json", "Authorization": alice.basic},
        timeout=30,
    )
    assert resp.ok, resp.text
    for _ in range(10):
        state = _st_get(alice, "/sdapi/v1/progress").json()
        if state["progress"] == 0.0 and state["state"]["job_count"] == 0:
            break
        time.sleep(0.5)
    else:
        raise AssertionError(f"progress never went idle: {state}")

    # generate: options first (a Forge server has forge_preset), then txt2img with the whole body.
    assert "forge_preset" not in _st_get(alice, "/sdapi/v1/options").json()
    body: dict[str, Any] = {
        "url": alice.base,
        "auth": f"{alice.username}:{alice.key}",
        "prompt": "a lighthouse, best quality",
        "negative_prompt": "lowres, bad anatomy",
        "sampler_name": "DPM++ 2M",
        "scheduler": "karras",
        "steps": STEPS,
        "cfg_scale": 7,
        "width": SIZE,
        "height": SIZE,
        "restore_faces": False,
        "enable_hr": False,
        "hr_upscaler": "Latent",
        "hr_scale": 2.0,
        "denoising_strength": 0.7,
        "hr_second_pass_steps": 0,
        "seed": 1234,
        "override_settings": {"CLIP_stop_at_last_layers": 1, "sd_vae": None if vae == "Automatic" else vae},
        "override_settings_restore_afterwards": True,
        "clip_skip": 1,
        "save_images": True,
        "send_images": True,
        "do_not_save_grid": False,
        "do_not_save_samples": False,
    }
    body["override_settings"] = {k: v for k, v in body["override_settings"].items() if v is not None}
    resp = requests.post(
        f"{alice.base}/sdapi/v1/txt2img",
        data=json.dumps(body),
        headers={"Content-Type": "application/json", "Authorization": alice.basic},
        timeout=120,
    )
    assert resp.ok, resp.text
    data = resp.json()
    assert image_of(data["images"][0]).size == (SIZE, SIZE)  # { format: 'png', data: data.images[0] }
    info = json.loads(data["info"])
    assert info["seed"] == 1234 and info["sampler_name"] == "DPM++ 2M Karras"
    # SillyTavern's own fields (its credentials among them) are not echoed back.
    assert "auth" not in data["parameters"] and "url" not in data["parameters"]
    assert data["parameters"]["prompt"] == body["prompt"]

    # The socket closing mid-generation makes SillyTavern POST /interrupt (no body, Basic auth).
    answer: dict[str, Any] = {}

    def long_job() -> None:
        slow = body | {"width": 256, "height": 256, "steps": 50, "seed": -1}
        r = requests.post(
            f"{alice.base}/sdapi/v1/txt2img",
            data=json.dumps(slow),
            headers={"Content-Type": "application/json", "Authorization": alice.basic},
            timeout=150,
        )
        answer["status"], answer["body"] = r.status_code, r.json()

    worker = threading.Thread(target=long_job)
    worker.start()
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and "status" not in answer:
            if _st_get(alice, "/sdapi/v1/progress").json()["state"]["job_count"] >= 1:
                break
            time.sleep(0.1)
        resp = requests.post(
            f"{alice.base}/sdapi/v1/interrupt", headers={"Authorization": alice.basic}, timeout=30
        )
        assert resp.status_code == 200 and resp.json() == {}
    finally:
        worker.join(timeout=150)
    assert answer["status"] == 200, answer
    assert json.loads(answer["body"]["info"])["interrupted"] is True
    assert _st_get(alice, "/sdapi/v1/progress").json()["state"]["job_count"] == 0


# --- LibreChat -----------------------------------------------------------------------------------


def test_librechat_stable_diffusion_tool(alice: User) -> None:
    """danny-avila/LibreChat api/app/clients/tools/structured/StableDiffusion.js: axios.post(
    `${SD_WEBUI_URL}/sdapi/v1/txt2img`, {prompt, negative_prompt, cfg_scale: 4.5, steps, width,
    height}) with the credentials in SD_WEBUI_URL (http://user:key@host: axios sends them as HTTP
    Basic, as requests does here); reads images[0] and JSON.parse(info): height, width, seed,
    infotexts[0].split('\\n').pop()."""
    payload: dict[str, Any] = {
        "prompt": "a cabin in the woods",
        "negative_prompt": "text, watermark",
        "cfg_scale": 4.5,
        "steps": STEPS,
        "width": SIZE,
        "height": SIZE,
    }
    resp = requests.post(f"{alice.url_with_credentials}/sdapi/v1/txt2img", json=payload, timeout=120)
    assert resp.status_code == 200, resp.text
    data = resp.json()
    image = base64.b64decode(data["images"][0].split(",", 1)[0])
    assert image.startswith(b"\x89PNG")
    info = json.loads(data["info"])
    assert (info["width"], info["height"]) == (SIZE, SIZE) and isinstance(info["seed"], int)
    settings_line = info["infotexts"][0].split("\n").pop()
    assert settings_line.startswith("Steps: 2, Sampler: ") and f"Seed: {info['seed']}" in settings_line


def test_librechat_gpt_image_tool(alice: User) -> None:
    """danny-avila/LibreChat api/app/clients/tools/structured/OpenAIImageTools.js: image_gen_oai
    calls openai.images.generate({model: 'gpt-image-1', prompt, n, background, output_format,
    output_compression (webp and jpeg only), quality, size}) with no response_format and reads
    data[0].b64_json; image_edit_oai posts multipart {model, prompt, quality, size} with the images
    as `image[]` and reads data[0].b64_json."""
    client = openai.OpenAI(base_url=f"{alice.base}/v1", api_key=alice.key, max_retries=0, timeout=120)
    wanted: list[tuple[Literal["png", "webp", "jpeg"], int | None, str]] = [
        ("png", None, "PNG"),
        ("webp", 100, "WEBP"),
        ("jpeg", 80, "JPEG"),
    ]
    for output_format, compression, pil_format in wanted:
        resp = client.images.generate(
            model="gpt-image-1",
            prompt="a paper boat",
            n=1,
            background="auto",
            output_format=output_format,
            output_compression=compression,
            quality="auto",
            size="auto",
        )
        assert resp.data and resp.data[0].b64_json, resp
        assert image_of(resp.data[0].b64_json).format == pil_format

    form = {"model": "gpt-image-1", "prompt": "add a moon", "quality": "auto", "size": "auto"}
    files = [
        ("image[]", ("a.png", png_bytes(), "image/png")),
        ("image[]", ("b.png", png_bytes((9, 9, 9)), "image/png")),
    ]
    resp2 = requests.post(
        f"{alice.base}/v1/images/edits",
        data=form,
        files=files,
        headers={"Authorization": f"Bearer {alice.key}"},
        timeout=120,
    )
    assert resp2.status_code == 200, resp2.text
    assert image_of(resp2.json()["data"][0]["b64_json"]).size == (SIZE, SIZE)

    # The openai package itself sends a list of images as image[] fields too.
    edited = client.images.edit(
        model="gpt-image-1",
        image=[("a.png", png_bytes(), "image/png"), ("b.png", png_bytes((9, 9, 9)), "image/png")],
        prompt="add a moon",
        size="auto",
        extra_body={"steps": STEPS},
    )
    assert edited.data and edited.data[0].b64_json and edited.output_format == "png"


def test_librechat_dalle3_tool(alice: User) -> None:
    """danny-avila/LibreChat api/app/clients/tools/structured/DALLE3.js: openai.images.generate({
    model: 'dall-e-3', quality, style, size, prompt, n: 1}) with no response_format, then reads
    data[0].url, names the file after the URL path's basename and downloads it with a plain fetch
    (no API key)."""
    client = openai.OpenAI(base_url=f"{alice.base}/v1", api_key=alice.key, max_retries=0, timeout=120)
    resp = client.images.generate(
        model="dall-e-3",
        quality="standard",
        style="vivid",
        size=f"{SIZE}x{SIZE}",
        prompt="a fox",
        n=1,
    )
    assert resp.data is not None
    url = resp.data[0].url
    assert url and resp.data[0].b64_json is None
    basename = Path(urlparse(url).path).name
    assert basename.endswith(".png")  # the extension LibreChat gives its copy
    download = requests.get(url, timeout=30)  # no Authorization header
    assert download.status_code == 200 and download.headers["Content-Type"] == "image/png"
    assert Image.open(io.BytesIO(download.content)).size == (SIZE, SIZE)


# --- Dify ----------------------------------------------------------------------------------------


DIFY_DRAW_TEXT_OPTIONS: dict[str, Any] = {
    "prompt": "",
    "negative_prompt": "",
    "seed": -1,
    "subseed": -1,
    "subseed_strength": 0,
    "seed_resize_from_h": -1,
    "sampler_index": "DPM++ SDE Karras",
    "seed_resize_from_w": -1,
    "batch_size": 1,
    "n_iter": 1,
    "steps": 10,
    "cfg_scale": 7,
    "width": 1024,
    "height": 1024,
    "restore_faces": False,
    "do_not_save_samples": False,
    "do_not_save_grid": False,
    "eta": 0,
    "denoising_strength": 0,
    "s_min_uncond": 0,
    "s_churn": 0,
    "s_tmax": 0,
    "s_tmin": 0,
    "s_noise": 0,
    "override_settings": {},
    "override_settings_restore_afterwards": True,
    "refiner_switch_at": 0,
    "disable_extra_networks": False,
    "comments": {},
    "enable_hr": False,
    "firstphase_width": 0,
    "firstphase_height": 0,
    "hr_scale": 2,
    "hr_second_pass_steps": 0,
    "hr_resize_x": 0,
    "hr_resize_y": 0,
    "hr_prompt": "",
    "hr_negative_prompt": "",
    "script_args": [],
    "send_images": True,
    "save_images": False,
    "alwayson_scripts": {},
}


def test_dify_stable_diffusion_tool(alice: User) -> None:
    """langgenius/dify api/core/tools/provider/builtin/stablediffusion/tools/stable_diffusion.py:
    httpx get/post with no headers of their own (the credentials ride in base_url's userinfo, which
    httpx sends as HTTP Basic; bodies go as data=json.dumps(...), which httpx sends as raw content
    without a Content-Type, as content= does here).
    validate_models (GET sd-models, model_name), _invoke (POST options {sd_model_checkpoint}),
    text2img (DRAW_TEXT_OPTIONS, sampler_index 'DPM++ SDE Karras', override_settings naming the
    model) and img2img (init_images, script_args ['outpainting mk2'], sampler 'Euler a'); reads
    images[0]."""
    base = alice.url_with_credentials
    models = httpx.get(url=f"{base}/sdapi/v1/sd-models", timeout=10)
    assert models.status_code == 200
    model = "tiny-sdxl"
    assert model in [d["model_name"] for d in models.json()]

    resp = httpx.post(f"{base}/sdapi/v1/options", content=json.dumps({"sd_model_checkpoint": model}))
    assert "content-type" not in resp.request.headers
    assert resp.status_code == 200, resp.text

    draw = json.loads(json.dumps(DIFY_DRAW_TEXT_OPTIONS))
    draw.update(prompt="a lighthouse", width=SIZE, height=SIZE, steps=STEPS, negative_prompt="")
    draw["override_settings"]["sd_model_checkpoint"] = model
    resp = httpx.post(f"{base}/sdapi/v1/txt2img", content=json.dumps(draw), timeout=120)
    assert resp.status_code == 200, resp.text
    assert Image.open(io.BytesIO(base64.b64decode(resp.json()["images"][0]))).size == (SIZE, SIZE)
    info = json.loads(resp.json()["info"])
    assert info["sd_model_name"] == model and info["sampler_name"] == "DPM++ 2M SDE Karras"

    img2img = {
        "init_images": [base64.b64encode(png_bytes()).decode("utf-8")],
        "prompt": "a lighthouse at night",
        "negative_prompt": "",
        "denoising_strength": 0.9,
        "width": SIZE,
        "height": SIZE,
        "cfg_scale": 7,
        "sampler_name": "Euler a",
        "restore_faces": False,
        "steps": STEPS,
        "script_args": ["outpainting mk2"],
        "override_settings": {"sd_model_checkpoint": model},
    }
    resp = httpx.post(f"{base}/sdapi/v1/img2img", content=json.dumps(img2img), timeout=120)
    assert resp.status_code == 200, resp.text
    assert Image.open(io.BytesIO(base64.b64decode(resp.json()["images"][0]))).size == (SIZE, SIZE)


# --- webuiapi and the Photoshop plugin -----------------------------------------------------------


def test_webuiapi_every_supported_call_returns_data(alice: User) -> None:
    """mix1009/sdwebuiapi webuiapi/webuiapi.py: every call the studio supports answers data in A1111's
    shape (a list where A1111 answers one), never an error body in its place."""
    parsed = urlparse(alice.base)
    api = webuiapi.WebUIApi(host=parsed.hostname, port=parsed.port, use_https=False)
    api.set_auth(alice.username, alice.key)

    lists = {
        "get_samplers": api.get_samplers(),
        "get_schedulers": api.get_schedulers(),
        "get_sd_models": api.get_sd_models(),
        "get_sd_vae": api.get_sd_vae(),
        "get_upscalers": api.get_upscalers(),
        "get_latent_upscale_modes": api.get_latent_upscale_modes(),
        "get_loras": api.get_loras(),
        "get_hypernetworks": api.get_hypernetworks(),
        "get_face_restorers": api.get_face_restorers(),
        "get_realesrgan_models": api.get_realesrgan_models(),
        "get_prompt_styles": api.get_prompt_styles(),
    }
    assert all(isinstance(v, list) for v in lists.values()), lists
    assert lists["get_sd_models"] and lists["get_samplers"] and lists["get_schedulers"]
    assert set(api.get_embeddings()) == {"loaded", "skipped"}
    assert set(api.get_memory()) == {"ram", "cuda"}
    assert api.get_scripts() == {"txt2img": [], "img2img": []}
    assert isinstance(api.get_cmd_flags(), dict)
    assert api.get_progress()["state"]["job_count"] == 0
    assert api.refresh_checkpoints() is None  # requests' json() of A1111's null

    # util_set_model prints "model changed to ..." after set_options: here it is true.
    api.util_set_model("tiny-sdxl")
    assert api.util_get_current_model() == "tiny-sdxl"
    assert api.set_options({"sd_model_checkpoint": "tiny-sd", "samples_format": "png"}) is None
    assert api.get_options()["sd_model_checkpoint"] == "tiny-sd"
    with pytest.raises(RuntimeError):  # webuiapi raises on a non-200 generation answer
        api.txt2img(prompt="x", steps=STEPS, width=SIZE, height=SIZE, sampler_name="No Such Sampler")
    api.util_wait_for_ready(check_interval=0.1)

    result = api.txt2img(prompt="a red fox", width=SIZE, height=SIZE, steps=STEPS, seed=77)
    assert result.info["seed"] == 77 and result.info["sd_model_name"] == "tiny-sd"
    described = api.png_info(result.image)
    assert described.info.startswith("a red fox\n") and "Seed: 77" in described.info

    # samples_format is the user's too: WebP images, their parameters in EXIF as A1111 writes them.
    api.set_options({"samples_format": "webp", "jpeg_quality": 90})
    webp = api.txt2img(prompt="a blue fox", width=SIZE, height=SIZE, steps=STEPS, seed=78)
    assert webp.image.format == "WEBP"
    found = requests.post(
        f"{alice.base}/sdapi/v1/png-info", json={"image": webp.json["images"][0]}, timeout=30
    ).json()
    assert found["parameters"]["Seed"] == "78" and found["info"].startswith("a blue fox\n")
    api.set_options({"samples_format": "png"})
    assert api.interrupt() == {}


def test_photoshop_plugin_png_info(alice: User) -> None:
    """AbdullahAlfaraj/Auto-Photoshop-StableDiffusion-Plugin utility/sdapi/python_replacement.js:
    getAuto1111Metadata POSTs {image: 'data:image/png;base64,' + image} to /sdapi/v1/png-info with
    Accept and Content-Type JSON and no credentials, for each image a generation returned, and
    convertMetadataToJson splits json['info'] into the prompt and "Key: value" settings."""
    resp = requests.post(
        f"{alice.base}/sdapi/v1/txt2img",
        json={
            "prompt": "a cat on a sofa",
            "negative_prompt": "dog",
            "steps": STEPS,
            "width": SIZE,
            "height": SIZE,
            "seed": 4242,
            "batch_size": 2,
        },
        headers={"Authorization": alice.basic},
        timeout=120,
    )
    assert resp.status_code == 200, resp.text
    for i, image in enumerate(resp.json()["images"]):
        found = requests.post(
            f"{alice.base}/sdapi/v1/png-info",
            data=json.dumps({"image": "data:image/png;base64," + image}),
            headers={"Accept": "application/json", "Content-Type": "application/json"},
            timeout=30,
        )
        assert found.status_code == 200, found.text
        metadata = found.json()["info"]
        last = metadata.rindex("\n")
        prompt, settings = metadata[:last], metadata[last + 1 :]
        assert prompt.split("Negative prompt: ") == ["a cat on a sofa\n", "dog"]
        # setting.split(':').map((s) => s.trimLeft()) for each of other_settings.split(',')
        pairs = {
            key.lstrip(): value.lstrip()
            for key, value in (part.split(":", 1) for part in settings.split(",") if ":" in part)
        }
        assert pairs["Seed"] == str(4242 + i) and pairs["Steps"] == str(STEPS)
        parsed = found.json()["parameters"]
        assert parsed["Prompt"] == "a cat on a sofa" and parsed["Seed"] == str(4242 + i)
        assert (parsed["Size-1"], parsed["Size-2"]) == (str(SIZE), str(SIZE))


# --- what the faces refuse -----------------------------------------------------------------------


def test_compatible_faces_refuse_bad_input_with_4xx(alice: User) -> None:
    base = alice.base
    auth = {"Authorization": alice.basic}

    def post(path: str, timeout_s: float = 30, **kwargs: Any) -> requests.Response:
        return requests.post(
            f"{base}{path}", headers={**auth, **kwargs.pop("headers", {})}, timeout=timeout_s, **kwargs
        )

    resp = post("/sdapi/v1/options", json={"sd_model_checkpoint": "nope.safetensors [abc]"})
    assert resp.status_code == 404 and "nope" in resp.json()["detail"], resp.text
    assert options_of(alice)["sd_model_checkpoint"] != "nope"
    for bad in ({"samples_format": "gif"}, {"jpeg_quality": "high"}, {"CLIP_stop_at_last_layers": 99}):
        resp = post("/sdapi/v1/options", json=bad)
        assert resp.status_code == 422 and resp.json()["detail"][0]["loc"] == ["body", next(iter(bad))], (
            resp.text
        )
    assert post("/sdapi/v1/options", json={"unknown_option": 1, "sd_vae": "Automatic"}).json() is None
    assert post("/sdapi/v1/options", json=[1, 2]).status_code == 422
    assert post("/sdapi/v1/options", data="{not json").status_code == 422
    assert post("/sdapi/v1/options", data=b"\x00\xff").status_code == 422
    # A browser page can post without a Content-Type, but it sends an Origin: refused.
    resp = post("/sdapi/v1/options", data=b"{}", headers={"Origin": "https://elsewhere.example"})
    assert resp.status_code == 422 and resp.json()["detail"][0]["type"] == "json_invalid"
    assert post("/sdapi/v1/options", data="{}", headers={"Content-Type": "text/plain"}).status_code == 422

    resp = requests.post(
        f"{base}/sdapi/v1/png-info", json={"image": base64.b64encode(b"plain text").decode()}, timeout=30
    )
    assert resp.status_code == 422 and resp.json()["detail"][0]["loc"] == ["body", "image"]
    resp = requests.post(f"{base}/sdapi/v1/png-info", json={"image": "%%%"}, timeout=30)
    assert resp.status_code == 422
    resp = requests.post(f"{base}/sdapi/v1/png-info", json={"image": 5}, timeout=30)
    assert resp.status_code == 422
    bare = base64.b64encode(png_bytes()).decode()
    resp = requests.post(f"{base}/sdapi/v1/png-info", json={"image": bare}, timeout=30)
    assert resp.status_code == 200 and resp.json()["info"] == ""

    resp = post("/sdapi/v1/txt2img", json={"prompt": "x", "sampler_name": "DPM++ 9M"})
    assert resp.status_code == 422 and resp.json()["detail"][0]["loc"] == ["body", "sampler_name"]
    # NUL and lone surrogates (JSON can spell one) are refused before anything is stored.
    for raw in (
        '{"prompt": "a\\u0000b"}',
        '{"prompt": "\\ud800"}',
        '{"override_settings": {"x": "\\udfff"}}',
    ):
        resp = post("/sdapi/v1/txt2img", data=raw, headers={"Content-Type": "application/json"})
        assert resp.status_code == 422 and resp.json()["detail"][0]["type"] == "invalid_field", (
            raw,
            resp.text,
        )
    resp = post(
        "/sdapi/v1/options", data='{"sd_vae": "\\u0000"}', headers={"Content-Type": "application/json"}
    )
    assert resp.status_code == 422

    bearer = {"Authorization": f"Bearer {alice.key}"}
    cases: list[tuple[dict[str, Any], str]] = [
        ({"prompt": "x", "output_format": "gif"}, "output_format"),
        ({"prompt": "x", "output_compression": 101}, "output_compression"),
        ({"prompt": "x", "response_format": "file"}, "response_format"),
    ]
    for bad_body, param in cases:
        resp = requests.post(f"{base}/v1/images/generations", json=bad_body, headers=bearer, timeout=30)
        assert resp.status_code == 400 and resp.json()["error"]["param"] == param, resp.text
    resp = requests.post(
        f"{base}/v1/images/generations",
        data='{"prompt": "\\ud800"}',
        headers={**bearer, "Content-Type": "application/json"},
        timeout=30,
    )
    assert resp.status_code == 400 and resp.json()["error"]["param"] == "prompt", resp.text
    resp = requests.post(
        f"{base}/v1/images/edits",
        data={"prompt": "a\x00b"},
        files={"image": ("a.png", png_bytes(), "image/png")},
        headers=bearer,
        timeout=30,
    )
    assert resp.status_code == 400 and resp.json()["error"]["code"] == "invalid_field", resp.text
    big = {"prompt": "x", "negative_prompt": "y" * (2 * 1024 * 1024)}
    resp = requests.post(f"{base}/v1/images/generations", json=big, headers=bearer, timeout=30)
    assert resp.status_code == 413 and resp.json()["error"]["type"] == "invalid_request_error", resp.text
    resp = post("/sdapi/v1/txt2img", json=big)
    assert resp.status_code == 413 and resp.json()["error"] == "HTTPException", resp.text
    # A checkpoint by title with A1111's decorations, in another case, is found.
    checkpoint = {"sd_model_checkpoint": "Tiny-SDXL.safetensors [0a1b2c]"}
    resp = post(
        "/sdapi/v1/txt2img", json={"prompt": "x", "steps": 1, "override_settings": checkpoint}, timeout_s=120
    )
    assert resp.status_code == 200 and json.loads(resp.json()["info"])["sd_model_name"] == "tiny-sdxl", (
        resp.text
    )
    too_many = [("image[]", (f"{i}.png", png_bytes(), "image/png")) for i in range(17)]
    resp = requests.post(
        f"{base}/v1/images/edits", data={"prompt": "x"}, files=too_many, headers=bearer, timeout=60
    )
    assert resp.status_code == 400 and resp.json()["error"]["code"] == "too_many_images"
