"""The pieces request models are built from, and how pydantic's refusals become the API's errors.

A field is declared once, as an `Annotated` type: its JSON type, its limits and its description. The
limits pydantic checks here are the gateway's own; a limit a backend owns (a prompt's length, the
seed's range) is stated with `owned(...)`, which puts it in the document with the code the backend
answers, and the backend checks it. Either way the document says what is enforced, and
tests/integration/test_gateway_limits.py holds the two together.

A refusal names the field and says what to send (`invalid_field`, `missing_field`, ...); pydantic's
own messages and its error URLs never reach a client.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar, get_args

import annotated_types
from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, ValidationError
from pydantic.fields import FieldInfo
from pydantic_core import PydanticCustomError

from services.common.errors import EaselError, invalid

INT32_MAX = 2**31 - 1
INT64_MAX = 2**63 - 1
# The custom error type a field validator raises: its context carries the code and the sentence.
EASEL_ERROR = "easel"

_WHAT = {
    "string_type": "a string",
    "int_type": "a whole number",
    "int_from_float": "a whole number",
    "float_type": "a number",
    "finite_number": "a number",
    "bool_type": "true or false",
    "list_type": "a list of strings",
}


class Contract(BaseModel):
    """A request body: JSON types taken as they are (no "5" for 5), unknown fields ignored."""

    model_config = ConfigDict(strict=True, extra="ignore", frozen=True)


def owned(owner: str, code: str, **limits: Any) -> dict[str, Any]:
    """JSON-schema limits that `owner` enforces (answering `code`), for a field's `json_schema_extra`."""
    return {**limits, "x-error-code": code, "x-enforced-by": owner}


def refuse(code: str, message: str) -> PydanticCustomError:
    """What a field validator raises to answer with a code and sentence of its own."""
    return PydanticCustomError(EASEL_ERROR, "{message}", {"code": code, "message": message})


def _whole(value: object) -> object:
    # 3.0 is a whole number in JSON; True is not (bool is an int subclass in Python).
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _not_blank(value: str | None) -> str | None:
    if value is not None and not value.strip():
        raise PydanticCustomError("blank", "blank")
    return value


Whole = BeforeValidator(_whole)
NotBlank = AfterValidator(_not_blank)


def _choices(expected: str) -> str:
    # pydantic's "'a', 'b' or 'c'" as the API has always said it: "a, b, c".
    return expected.replace("' or '", "', '").replace("'", "")


def field_error(
    name: str, error: Mapping[str, Any], required: bool, between: tuple[float, float] | None = None
) -> EaselError:
    """One of pydantic's error dicts as the API's error about field `name`; `between`: the range of
    a number field, which a refusal states whole ("between 0 and 1")."""
    kind = str(error["type"])
    ctx: Mapping[str, Any] = error.get("ctx") or {}
    value = error.get("input")
    if kind == EASEL_ERROR:
        return invalid(str(ctx["code"]), str(ctx["message"]).replace("{field}", name), field=name)
    if kind == "missing" or (value is None and required and len(error["loc"]) == 1):
        return invalid("missing_field", f"'{name}' is required.", field=name)
    if kind == "blank":
        if required:
            return invalid("missing_field", f"'{name}' must not be empty.", field=name)
        return invalid("invalid_field", f"'{name}' must be a non-empty string.", field=name)
    if kind == "string_too_long":
        what = f"at most {ctx['max_length']} characters long"
    elif kind in ("too_long", "too_short") and "max_length" in ctx:
        what = f"a list of at most {ctx['max_length']} items"
    elif kind in ("greater_than_equal", "less_than_equal") and between is not None:
        what = f"between {between[0]:g} and {between[1]:g}"
    elif kind == "greater_than_equal":
        what = f"at least {ctx['ge']}"
    elif kind == "less_than_equal":
        what = f"at most {ctx['le']}"
    elif kind == "literal_error":
        what = f"one of {_choices(str(ctx['expected']))}" if isinstance(value, str) else "a string"
    elif len(error["loc"]) > 1:  # an item of a list
        what = "a list of strings"
    else:
        what = _WHAT.get(kind, "of the documented type")
    return invalid("invalid_field", f"'{name}' must be {what}.", field=name)


def refusal(model: type[BaseModel], exc: ValidationError) -> EaselError:
    """The first of pydantic's complaints about a body for `model`, as the API's error."""
    error = exc.errors(include_url=False)[0]
    loc = error["loc"]
    if not loc:
        return invalid("invalid_body", 'The body must be a JSON object, like {"prompt": "..."}.')
    name = str(loc[0])
    info = model.model_fields.get(name)
    if info is None:
        return field_error(name, error, False)
    return field_error(name, error, info.is_required(), _number_range(info))


def _number_range(info: FieldInfo) -> tuple[float, float] | None:
    if float not in get_args(info.annotation) and info.annotation is not float:
        return None
    ge = next((m.ge for m in info.metadata if isinstance(m, annotated_types.Ge)), None)
    le = next((m.le for m in info.metadata if isinstance(m, annotated_types.Le)), None)
    if not isinstance(ge, int | float) or not isinstance(le, int | float):
        return None
    return float(ge), float(le)


M = TypeVar("M", bound=BaseModel)


def parse(model: type[M], data: Mapping[str, Any]) -> M:
    """`data` as a `model`, or the 400 that names the first wrong field."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise refusal(model, exc) from None


__all__ = [
    "EASEL_ERROR",
    "INT32_MAX",
    "INT64_MAX",
    "Contract",
    "NotBlank",
    "Whole",
    "field_error",
    "owned",
    "parse",
    "refusal",
    "refuse",
]
