"""Fills the model volume: builds the bundled test models, or fetches named hub models.

    python -m services.inference.fetch --models-dir models --bundled
    python -m services.inference.fetch --models-dir models stabilityai/sdxl-turbo [...]

A hub model lands in `<models-dir>/<slug>` in diffusers layout (only the files a pipeline loads,
one precision of the weights) with an `easel-model.json` guessed from its configs. Workers never
fetch: this is the explicit step that runs before them.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import shutil
import sys
from pathlib import Path
from typing import Any

from services.common.errors import EaselError

from .models import (
    FAMILY_DEFAULTS,
    FLOW_SAMPLERS,
    KINDS,
    MANIFEST_FILE,
    NAME_RE,
    ModelManifest,
    load_manifest,
    models_dir_from_env,
    write_manifest,
)

log = logging.getLogger(__name__)

REPO_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*/[A-Za-z0-9][A-Za-z0-9_.\-]*$")
SD_CLASSES = {"StableDiffusionPipeline", "StableDiffusionImg2ImgPipeline", "StableDiffusionInpaintPipeline"}
SDXL_CLASSES = {
    "StableDiffusionXLPipeline",
    "StableDiffusionXLImg2ImgPipeline",
    "StableDiffusionXLInpaintPipeline",
}
SD3_CLASSES = {
    "StableDiffusion3Pipeline",
    "StableDiffusion3Img2ImgPipeline",
    "StableDiffusion3InpaintPipeline",
}
FLUX_CLASSES = {"FluxPipeline", "FluxImg2ImgPipeline", "FluxInpaintPipeline"}
# Components Easel never loads; the safety checker alone is 1.2 GB.
SKIP_COMPONENTS = {"safety_checker"}
_WEIGHT_EXTS = (".safetensors", ".bin")
# "model.fp16.safetensors", "diffusion_pytorch_model.fp16-00001-of-00002.safetensors", "x.index.fp16.json"
_PRECISION_RE = re.compile(r"\.(fp16|bf16|fp32)[.-]")
_UNWANTED = ("non_ema", "ema_only", "ema-only", ".ckpt", ".onnx", ".msgpack", ".h5", ".pt")


def is_local_file(arg: str) -> bool:
    """A checkpoint file to import rather than a hub id: a path that exists or names a weights file."""
    return Path(arg).is_file() or arg.lower().endswith((".safetensors", ".ckpt", ".pt", ".pth", ".bin"))


class FetchError(Exception):
    """A fetch failed; the message is one line that says what to do."""


def slug_for(repo_id: str) -> str:
    """A model name from a hub id: its last part, lowercased, with anything else turned into dashes."""
    slug = re.sub(r"[^a-z0-9]+", "-", repo_id.rsplit("/", 1)[-1].lower()).strip("-")
    return slug[:64].strip("-")


def _precision(name: str) -> str | None:
    match = _PRECISION_RE.search(name.rsplit("/", 1)[-1])
    return match.group(1) if match else None


def choose_files(files: list[str], variant: str | None = "fp16") -> list[str]:
    """The files of a hub repo a diffusers pipeline needs, with one set of weights per component.

    Per component folder: every config and tokenizer file, and the weights in the first of: the
    `variant` safetensors, plain safetensors, the `variant` .bin, plain .bin (then any precision).
    Root files other than model_index.json (single-file checkpoints, images, READMEs) are skipped.
    """
    chosen = ["model_index.json"] if "model_index.json" in files else []
    by_component: dict[str, list[str]] = {}
    for path in files:
        parts = path.split("/")
        if len(parts) != 2 or parts[0] in SKIP_COMPONENTS or parts[0].startswith("."):
            continue
        by_component.setdefault(parts[0], []).append(path)
    for component in sorted(by_component):
        paths = by_component[component]
        weights = [
            p for p in paths if p.endswith(_WEIGHT_EXTS) and not any(u in p.lower() for u in _UNWANTED)
        ]
        others = [
            p
            for p in paths
            if p.endswith((".json", ".txt", ".model")) and not any(u in p.lower() for u in _UNWANTED)
        ]
        groups: list[tuple[str | None, str]] = []
        if variant:
            groups += [(variant, ".safetensors"), (None, ".safetensors"), (variant, ".bin"), (None, ".bin")]
        else:
            groups += [(None, ".safetensors"), (None, ".bin")]
        groups += [("fp16", ".safetensors"), ("bf16", ".safetensors"), ("fp16", ".bin")]
        for precision, ext in groups:
            group = [p for p in weights if p.endswith(ext) and _precision(p) == precision]
            if group:
                chosen += group
                break
        picked = [c for c in chosen if c.startswith(f"{component}/")]
        for p in others:
            # Sharded weights come with an index per format and precision; keep the matching one.
            if ".index." in p:
                fmt = ".safetensors" if ".safetensors.index" in p else ".bin"
                if not picked or not picked[0].endswith(fmt) or _precision(p) != _precision(picked[0]):
                    continue
            chosen.append(p)
    return chosen


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def guess_manifest(folder: Path, source: str, name: str) -> ModelManifest:
    """A manifest for a diffusers folder, from its model_index.json and component configs."""
    index = _read_json(folder / "model_index.json")
    cls = str(index.get("_class_name", ""))
    if cls in SDXL_CLASSES:
        family = "sdxl"
    elif cls in SD_CLASSES:
        text = _read_json(folder / "text_encoder" / "config.json")
        # SD 2.x conditions on OpenCLIP ViT-H (1024 wide); SD 1.x on CLIP ViT-L (768).
        family = "sd2" if int(text.get("hidden_size", 768)) >= 1024 else "sd1"
    elif cls in SD3_CLASSES or cls in FLUX_CLASSES:
        return _guess_flow_manifest(folder, source, name, "sd3" if cls in SD3_CLASSES else "flux")
    else:
        raise FetchError(
            f"{source} is a {cls or 'non-diffusers'} model; Easel runs Stable Diffusion 1.x, 2.x, SDXL, "
            "SD 3.5 and Flux.1 pipelines only"
        )
    if "turbo" in source.lower():
        family = "sdxl-turbo" if family == "sdxl" else "sd-turbo"
    unet = _read_json(folder / "unet" / "config.json")
    inpainting = "Inpaint" in cls or int(unet.get("in_channels", 4)) == 9
    size, steps, guidance, sampler, min_size, max_size, max_steps = FAMILY_DEFAULTS[family]
    scheduler = _read_json(folder / "scheduler" / "scheduler_config.json")
    if family == "sd2" and scheduler.get("prediction_type") == "v_prediction":
        size = 768  # the v-prediction SD 2.x checkpoints are the 768 ones; "-base" is 512 epsilon
    return ModelManifest(
        name=name,
        family=family,
        kinds=("inpaint",) if inpainting else KINDS,
        default_width=size,
        default_height=size,
        default_steps=steps,
        default_guidance=guidance,
        default_sampler=sampler,
        min_size=min_size,
        max_size=max_size,
        max_steps=max_steps,
        inpainting=inpainting,
        path=folder,
        source=source,
    )


def _guess_flow_manifest(folder: Path, source: str, name: str, family: str) -> ModelManifest:
    """SD 3.5 and Flux.1: family defaults, with the few-step distilled variants told apart."""
    size, steps, guidance, sampler, min_size, max_size, max_steps = FAMILY_DEFAULTS[family]
    transformer = _read_json(folder / "transformer" / "config.json")
    length = 256
    if family == "flux":
        if transformer.get("guidance_embeds") is False or "schnell" in source.lower():
            # schnell: timestep-distilled to 1-4 steps, no guidance input, 256 T5 tokens.
            steps, guidance = 4, 0.0
        else:
            length = 512
    elif "turbo" in source.lower():
        steps, guidance = 4, 0.0
    return ModelManifest(
        name=name,
        family=family,
        kinds=KINDS,
        default_width=size,
        default_height=size,
        default_steps=steps,
        default_guidance=guidance,
        default_sampler=sampler,
        min_size=min_size,
        max_size=max_size,
        max_steps=max_steps,
        inpainting=False,
        path=folder,
        source=source,
        samplers=FLOW_SAMPLERS,
        size_multiple=16,
        max_sequence_length=length,
        # Without a T5 folder (some SD 3.5 repacks leave it out) the model runs on its CLIPs alone.
        t5=family != "sd3" or (folder / "text_encoder_3").is_dir(),
    )


def _hub_error(repo_id: str, exc: Exception) -> FetchError:
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    if isinstance(exc, GatedRepoError):
        return FetchError(
            f"{repo_id} is gated: accept its license on huggingface.co and log in (`hf auth login`), "
            "then fetch again"
        )
    if isinstance(exc, RepositoryNotFoundError):
        return FetchError(f"{repo_id} is not on the Hugging Face hub (or is private): check the name")
    first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
    return FetchError(
        f"cannot reach the Hugging Face hub for {repo_id} ({type(exc).__name__}: {first}); check the "
        "network or HF_ENDPOINT, or copy the model folder into the models folder by hand"
    )


def check_reachable(endpoint: str | None, repo_id: str, timeout: float = 10.0) -> None:
    """One quick request to the hub, so an offline machine fails in seconds, not after the hub
    client's retries with back-off."""
    import urllib.error
    import urllib.request

    base = (endpoint or os.environ.get("HF_ENDPOINT") or "https://huggingface.co").rstrip("/")
    if not base.startswith(("https://", "http://")):
        raise FetchError(f"HF_ENDPOINT {base!r} is not an http(s) address: fix or unset it")
    try:
        # urllib honours HTTPS_PROXY and friends, as the hub client does; the scheme is checked above.
        with urllib.request.urlopen(f"{base}/api/models/{repo_id}", timeout=timeout):  # nosec B310
            pass
    except urllib.error.HTTPError:
        pass  # the hub answered; the hub client turns 401/404 into a precise error below
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise FetchError(
            f"cannot reach the Hugging Face hub at {base} for {repo_id} ({reason}); check the network "
            "or HF_ENDPOINT, or copy the model folder into the models folder by hand"
        ) from None


def fetch_model(
    repo_id: str,
    models_dir: Path,
    variant: str | None = "fp16",
    name: str | None = None,
    force: bool = False,
    endpoint: str | None = None,
) -> Path:
    """Downloads `repo_id` into `models_dir/<name>` and writes its manifest; returns the folder."""
    if not REPO_RE.match(repo_id):
        raise FetchError(f"{repo_id!r} is not a hub model id: use the form org/name")
    name = name or slug_for(repo_id)
    if not NAME_RE.match(name):
        raise FetchError(
            f"cannot make a model name from {repo_id!r}: pass --name with lowercase letters and dashes"
        )
    target = models_dir / name
    if not force and (target / MANIFEST_FILE).is_file():
        try:
            existing = load_manifest(target)
        except ValueError:
            existing = None
        if existing is not None and existing.source == repo_id:
            log.info("%s is already in %s", repo_id, target)
            return target
        if existing is not None:
            raise FetchError(
                f"{target} already holds {existing.source}: pass --name to put {repo_id} elsewhere"
            )
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        raise FetchError(
            f"HF_HUB_OFFLINE is set, so {repo_id} cannot be fetched: unset it, or copy the folder in"
        )

    check_reachable(endpoint, repo_id)
    from huggingface_hub import HfApi, snapshot_download

    try:
        info = HfApi(endpoint=endpoint).model_info(repo_id)
    except Exception as exc:  # the hub client raises many network error types
        raise _hub_error(repo_id, exc) from None
    # Pinning the commit makes the file list and the download agree even if the repo moves on.
    revision = info.sha
    files = [s.rfilename for s in info.siblings or []]
    wanted = choose_files(files, variant)
    if "model_index.json" not in wanted:
        raise FetchError(f"{repo_id} has no model_index.json: it is not a diffusers pipeline repository")
    # Downloads go to a dot folder (discovery skips those) and resume there if interrupted.
    staging = models_dir / f".fetching-{name}"
    staging.mkdir(parents=True, exist_ok=True)
    log.info("fetching %d files of %s at %s into %s", len(wanted), repo_id, revision, target)
    try:
        snapshot_download(
            repo_id, revision=revision, local_dir=staging, allow_patterns=wanted, endpoint=endpoint
        )
    except Exception as exc:
        raise _hub_error(repo_id, exc) from None
    manifest = guess_manifest(staging, repo_id, name)
    write_manifest(staging, manifest)
    shutil.rmtree(staging / ".cache", ignore_errors=True)
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)
    log.info("%s is ready in %s (family %s)", repo_id, target, manifest.family)
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m services.inference.fetch", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "repos",
        nargs="*",
        help="hub model ids (org/name) to fetch, or .safetensors checkpoint files to import",
    )
    parser.add_argument(
        "--models-dir", type=Path, default=None, help="default: $EASEL_MODELS_DIR or ./models"
    )
    parser.add_argument("--bundled", action="store_true", help="build the bundled test models if absent")
    parser.add_argument(
        "--variant",
        default="fp16",
        help="weights precision to prefer (fp16, bf16, or 'none' for full precision); default fp16",
    )
    parser.add_argument("--name", help="model name for a single repo (default: from the repo id)")
    parser.add_argument("--force", action="store_true", help="fetch again even if present")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    models_dir: Path = args.models_dir or models_dir_from_env()
    if not args.bundled and not args.repos:
        parser.error("name hub models to fetch, or pass --bundled")
    if args.name and len(args.repos) != 1:
        parser.error("--name works with exactly one repo")
    try:
        if args.bundled:
            from .testmodel import ensure_bundled

            built = ensure_bundled(models_dir)
            print(f"bundled models in {models_dir}: {', '.join(built) + ' built' if built else 'present'}")
        variant = None if args.variant.lower() in ("none", "fp32", "") else args.variant
        for repo in args.repos:
            if is_local_file(repo):
                from .singlefile import import_checkpoint, short_hash

                manifest = import_checkpoint(Path(repo), models_dir, name=args.name)
                digest = short_hash(manifest.sha256 or "")
                print(f"{repo} -> {manifest.path} ({manifest.family}, hash {digest})")
                continue
            folder = fetch_model(repo, models_dir, variant=variant, name=args.name, force=args.force)
            print(f"{repo} -> {folder}")
    except FetchError as exc:
        print(f"easel: {exc}", file=sys.stderr)
        return 1
    except EaselError as exc:
        print(f"easel: {exc.message} ({exc.code})", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
