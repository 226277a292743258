"""``GET /api/v1/files/{task_id}/input``: a task's input by its signed link (``input_file_url``,
and ``pdf_url`` for a PDF), with no key: the signature is the grant (``api.links``)."""

from __future__ import annotations

from typing import Annotated

from litestar import Controller, get
from litestar.enums import MediaType
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import FromPath, QueryParameter
from litestar.response.base import ASGIResponse

from api.links import FILES_PATH, OCTET_STREAM
from api.streaming import Streamed
from api.tasks import Service
from api.worker import content_disposition

LINK_RESPONSES = {
    code: ResponseSpec(
        data_container=str,
        media_type=MediaType.TEXT,
        description=description,
        generate_examples=False,
    )
    for code, description in (
        (403, "The link was altered or has expired, or the server's link secret was rotated"),
        (404, "Task not found (deleted or expired), or its input purged"),
    )
}


class FilesController(Controller):
    path = FILES_PATH
    tags = ["files"]

    # security=[{}] and exclude_from_auth: no key (a browser or a third party follows the link).
    @get(
        "/{task_id:str}/input",
        summary="A task's input by its signed link (no key)",
        media_type=OCTET_STREAM,
        security=[{}],
        exclude_from_auth=True,
        responses=LINK_RESPONSES,
    )
    async def linked_input(
        self,
        service: Service,
        task_id: FromPath[str],
        expires: Annotated[
            str | None, QueryParameter(description="When the link expires (unix seconds)")
        ] = None,
        signature: Annotated[
            str | None, QueryParameter(description="The link's signature (HMAC-SHA256, hex)")
        ] = None,
    ) -> ASGIResponse:
        found = await service.read_linked_input(task_id, expires=expires, signature=signature)
        return Streamed(
            found.pieces,
            size=found.size,
            media_type=found.media_type,
            headers={
                "Content-Disposition": content_disposition(found.name),
                "X-Content-Type-Options": "nosniff",
                "Cache-Control": "private",
            },
        )
