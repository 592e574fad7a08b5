"""The REST contract's request models: what they take, and how a refusal reads.

Pydantic's own messages must never reach a client: each refusal is the API's error, with the
stable code, the field and a sentence that says what to send.
"""

from __future__ import annotations

from typing import Any, get_args

import pytest

from services.common import limits
from services.common.errors import EaselError
from services.gateway import models
from services.gateway.fields import parse


def refusal(model: type[Any], data: dict[str, Any]) -> tuple[str, str | None, str]:
    with pytest.raises(EaselError) as caught:
        parse(model, data)
    return caught.value.code, caught.value.field, caught.value.message


@pytest.mark.parametrize(
    ("data", "code", "field", "message"),
    [
        ({}, "missing_field", "prompt", "'prompt' is required."),
        ({"prompt": None}, "missing_field", "prompt", "'prompt' is required."),
        ({"prompt": "   "}, "missing_field", "prompt", "'prompt' must not be empty."),
        ({"prompt": 5}, "invalid_field", "prompt", "'prompt' must be a string."),
        ({"prompt": "ok", "width": "64"}, "invalid_field", "width", "'width' must be a whole number."),
        ({"prompt": "ok", "width": 64.5}, "invalid_field", "width", "'width' must be a whole number."),
        ({"prompt": "ok", "steps": True}, "invalid_field", "steps", "'steps' must be a whole number."),
        ({"prompt": "ok", "n": 0}, "invalid_field", "n", "'n' must be at least 1."),
        ({"prompt": "ok", "seed": 2**64}, "invalid_field", "seed", f"'seed' must be at most {2**63 - 1}."),
        ({"prompt": "ok", "guidance": "high"}, "invalid_field", "guidance", "'guidance' must be a number."),
        (
            {"prompt": "ok", "guidance": float("nan")},
            "invalid_field",
            "guidance",
            "'guidance' must be a number.",
        ),
        ({"prompt": "ok", "sampler": "s" * 101}, "invalid_field", "sampler", None),
        ({"prompt": "ok", "model": {"name": "x"}}, "invalid_field", "model", "'model' must be a string."),
    ],
)
def test_generation_refusals(data: dict[str, Any], code: str, field: str, message: str | None) -> None:
    got = refusal(models.GenerationRequest, data)
    assert got[:2] == (code, field)
    if message is not None:
        assert got[2] == message
    assert "pydantic" not in got[2] and "Input should" not in got[2]


def test_generation_takes_json_as_json() -> None:
    body = parse(models.GenerationRequest, {"prompt": "a fox", "width": 64.0, "seed": -1, "extra": "ignored"})
    assert body.width == 64 and isinstance(body.width, int)
    assert body.seed == -1 and body.n is None


def test_owned_limits_are_documented_not_checked_here() -> None:
    # The backend that owns them answers (invalid_prompt, too_many_images, invalid_seed), so the
    # answer is the same whichever layer sees the request first.
    body = parse(
        models.GenerationRequest,
        {"prompt": "p" * (limits.PROMPT_MAX_CHARS + 1), "n": 9, "seed": limits.SEED_MAX + 1},
    )
    assert body.n == 9
    schema = models.GenerationRequest.model_json_schema()["properties"]
    assert schema["prompt"]["maxLength"] == limits.PROMPT_MAX_CHARS
    assert schema["prompt"]["x-error-code"] == "invalid_prompt"
    assert schema["n"]["maximum"] == limits.IMAGES_PER_JOB_MAX
    assert schema["seed"]["maximum"] == limits.SEED_MAX


@pytest.mark.parametrize(
    ("data", "code", "message"),
    [
        (
            {"visibility": "everyone"},
            "invalid_field",
            "'visibility' must be one of private, unlisted, public.",
        ),
        ({"tags": "a,b"}, "invalid_field", "'tags' must be a list of strings."),
        ({"tags": [1, 2]}, "invalid_field", "'tags' must be a list of strings."),
        (
            {"tags": ["t" * 41]},
            "tag_too_long",
            f"Tags may be at most {limits.TAG_MAX_CHARS} characters; shorten 'tttttttttttttttttttt'.",
        ),
        (
            {"tags": [f"t{i}" for i in range(21)]},
            "too_many_tags",
            "An image may have at most 20 tags; remove some.",
        ),
        ({"title": "t" * 201}, "invalid_field", "'title' must be at most 200 characters long."),
    ],
)
def test_image_update_refusals(data: dict[str, Any], code: str, message: str) -> None:
    got = refusal(models.ImageUpdate, data)
    assert got == (code, next(iter(data)), message)


def test_strength_range_reads_as_before() -> None:
    for strength in (2, -0.5):
        assert refusal(models.EditRequest, {"kind": "img2img", "strength": strength}) == (
            "invalid_field",
            "strength",
            "'strength' must be between 0 and 1.",
        )


def test_edit_kind_and_hidden() -> None:
    assert refusal(models.EditRequest, {"kind": "teleport"}) == (
        "invalid_kind",
        "kind",
        "'kind' must be one of img2img, inpaint, upscale, variation; got 'teleport'.",
    )
    assert refusal(models.HideRequest, {}) == ("missing_field", "hidden", "'hidden' is required.")
    assert refusal(models.HideRequest, {"hidden": "yes"}) == (
        "invalid_field",
        "hidden",
        "'hidden' must be true or false.",
    )


def test_the_typed_choices_are_the_shared_limits() -> None:
    # Literal types need their values spelled out; they must stay the shared ones.
    assert get_args(models.Visibility) == limits.VISIBILITIES
    assert get_args(models.JobStatus) == limits.JOB_STATUSES
    assert get_args(models.EditKind) == limits.EDIT_KINDS
    schema = models.EditRequest.model_json_schema()["properties"]["kind"]
    assert tuple(schema["enum"]) == limits.EDIT_KINDS
