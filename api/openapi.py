"""What the OpenAPI schema says that the handlers' signatures cannot.

* Error responses: every error is a plain-text body (as Chunkr's are), so each route lists the
  status codes it really answers with ``text/plain``, instead of Litestar's default JSON 400.
* Request bodies: the handlers decode their JSON bodies themselves (to give their own messages
  and to fingerprint the raw bytes for Idempotency-Key), so Litestar cannot see them; each route
  that takes one names its msgspec Struct here and the schema is msgspec's own.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgspec
from litestar.enums import MediaType
from litestar.openapi.datastructures import ResponseSpec
from litestar.openapi.spec import OpenAPIMediaType, Operation, Parameter, RequestBody
from litestar.openapi.spec.base import BaseSchemaObject

DESCRIPTIONS = {
    204: "Nothing to claim: no task became claimable while the claim waited",
    400: "Invalid request (the plain-text body says which field and why), or a command the "
    "task's status does not allow",
    401: "No API key, or an unknown or revoked one",
    403: "The key's role may not do this",
    404: "Task not found (missing, deleted, expired, or another owner's)",
    409: "The worker does not hold the task's lease",
    413: "Request body is too large",
    422: "Idempotency-Key was already used with a different request",
    429: "Rate limit exceeded for this key; see Retry-After",
    503: "The database cannot be written right now (disk full, read-only); see Retry-After",
}

#: Every route that needs a key.
AUTH = (401, 429)
#: Reads of one task.
READ = (400, *AUTH, 404)
#: Commands on one task (idempotent, through the writer); 413 only where there is a body.
WRITE = (400, *AUTH, 403, 404, 422, 503)


def responses(*codes: int, ok: Any = None, ok_text: str | None = None) -> dict[int, ResponseSpec]:
    """Plain-text responses for ``codes`` (204: no body), and the 200 response of a route whose
    handler returns raw bytes (see ``api.call``): JSON of ``ok`` or the plain text ``ok_text``."""
    specs = {
        code: ResponseSpec(
            data_container=None if code == 204 else str,
            media_type=MediaType.TEXT,
            description=DESCRIPTIONS[code],
            generate_examples=False,
        )
        for code in sorted(set(codes))
    }
    if ok is not None:
        specs[200] = ResponseSpec(data_container=ok, description="OK", generate_examples=False)
    elif ok_text is not None:
        specs[200] = ResponseSpec(
            data_container=str, media_type=MediaType.TEXT, description=ok_text, generate_examples=False
        )
    return specs


@dataclass(frozen=True)
class Query:
    """A query parameter a raw handler reads itself (see ``api.call``), for the schema."""

    name: str
    schema: dict[str, Any]
    description: str


def _query_parameter(query: Query) -> Parameter:
    return Parameter(
        name=query.name,
        param_in="query",
        required=False,
        description=query.description,
        schema=_JSONSchema(query.schema),  # type: ignore[arg-type]
    )


@dataclass
class _JSONSchema(BaseSchemaObject):
    """A JSON Schema held as a plain dict (msgspec's), emitted as it is."""

    value: dict[str, Any]

    def to_schema(self) -> dict[str, Any]:
        return self.value


def _inline(schema: Any, defs: dict[str, Any]) -> Any:
    """``schema`` with every ``#/$defs/X`` reference replaced by its definition (the body
    Structs are not recursive) and msgspec's null defaults dropped."""
    if isinstance(schema, dict):
        ref = schema.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/$defs/"):
            return _inline(defs[ref.removeprefix("#/$defs/")], defs)
        return {
            k: _inline(v, defs)
            for k, v in schema.items()
            if k != "$defs" and not (k == "default" and v is None)
        }
    if isinstance(schema, list):
        return [_inline(v, defs) for v in schema]
    return schema


def json_body(struct: type[msgspec.Struct], *, required: bool = True) -> type[Operation]:
    """An ``operation_class`` whose request body is ``struct`` as JSON."""
    full = msgspec.json.schema(struct)
    schema = _inline(full, full.get("$defs", {}))

    @dataclass
    class WithBody(Operation):
        def __post_init__(self) -> None:
            self.request_body = RequestBody(
                content={"application/json": OpenAPIMediaType(schema=_JSONSchema(schema))},  # type: ignore[arg-type]
                required=required,
            )

    WithBody.__name__ = f"{struct.__name__}Operation"
    return WithBody


def query_params(*queries: Query) -> type[Operation]:
    """An ``operation_class`` listing query parameters a raw handler parses itself."""

    @dataclass
    class WithQuery(Operation):
        def __post_init__(self) -> None:
            self.parameters = [*(self.parameters or []), *(_query_parameter(q) for q in queries)]

    return WithQuery
