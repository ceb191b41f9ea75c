"""fal's upload protocol and the file server behind every result URL.

Python client (`fal_v3`): `POST /rest/storage/auth/token` for a CDN token, then `POST /cdn/files/upload`
with the bytes. Python fallback and JS client: `POST /rest/storage/upload/initiate` for a signed
`upload_url`, then an unauthenticated `PUT` of the bytes to it; the URL stores one file, once.

Files over 100 MiB (Python) or 90 MiB (JS) come in 10 MiB parts:
- Python: `POST /cdn/files/upload/multipart` -> `{access_url, uploadId}`, then with the CDN token
  `PUT {access_url}/multipart/{uploadId}/{n}` (the `ETag` header answers) and
  `POST {access_url}/multipart/{uploadId}/complete` with `{"parts": [{"partNumber", "etag"}]}`.
- JS: `POST /rest/storage/upload/initiate-multipart` -> `{upload_url, file_url}`, then unauthenticated
  `PUT /cdn/multipart/{uploadId}/{n}?token=` (the JSON body answers `{partNumber, etag}`) and
  `POST /cdn/multipart/{uploadId}/complete?token=` with the same parts list.

Every body streams to the store in blocks (server/files.py, server/storage/s3.py) within the per-file
limit and the key's quota. Every stored file is served at `/files/{id}/{name}`, by every node.
"""

from datetime import datetime, timedelta, timezone
from functools import partial
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import APIRouter, Header, Query, Request, Response
from fastapi.responses import FileResponse, RedirectResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect

from server.auth import ANONYMOUS
from server.config import Settings
from server.deps import OwnerDep, ServicesDep
from server.errors import BadRequest, NotFound, Unauthorized
from server.files import (
    INLINE_TYPES,
    UploadLimits,
    UploadWriter,
    new_file_id,
    safe_file_name,
)
from server.schemas import (
    CdnToken,
    ErrorBody,
    error_responses,
    MultipartComplete,
    MultipartCreated,
    UploadedFile,
    UploadedPart,
    UploadInitiate,
    UploadTarget,
)
from server.services import Services

TOKEN_TTL_SECONDS = 3600.0
# a multipart upload URL (JS) must outlive a slow upload of many parts
MULTIPART_TOKEN_TTL_SECONDS = 24 * 3600.0
# bodies are written to disk in blocks of this size, off the event loop
WRITE_BLOCK_BYTES = 1024 * 1024
BINARY_BODY = {"requestBody": {"content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}}

router = APIRouter(tags=["storage"])


def upload_limits(settings: Settings) -> UploadLimits:
    return UploadLimits(
        max_file_bytes=settings.max_upload_bytes,
        quota_bytes=settings.upload_quota_bytes,
        quota_files=settings.upload_quota_files,
    )


async def receive_into(request: Request, writer: UploadWriter) -> Any:
    """Streams the request body into `writer` a block at a time (the disk writes run off the event
    loop), then commits it; on any failure what was written is deleted."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit():
        writer.check_declared(int(declared))
    try:
        block = bytearray()
        async for chunk in request.stream():
            block += chunk
            if len(block) >= WRITE_BLOCK_BYTES:
                await run_in_threadpool(writer.write, block)
                block = bytearray()
        if block:
            await run_in_threadpool(writer.write, block)
        return await run_in_threadpool(writer.commit)
    except ClientDisconnect:
        writer.abort()
        raise BadRequest("The client went away before the upload was complete") from None
    except BaseException:
        writer.abort()
        raise


@router.post("/rest/storage/auth/token", response_model=CdnToken, responses=error_responses(401))
def issue_cdn_token(
    services: ServicesDep, owner: OwnerDep, storage_type: Annotated[str | None, Query()] = None
) -> CdnToken:
    """A short-lived token for `POST /cdn/files/upload` (the Python client's default upload path)."""
    expires = datetime.now(timezone.utc) + timedelta(seconds=TOKEN_TTL_SECONDS)
    return CdnToken(
        token=services.tokens.sign({"kind": "cdn", "owner": owner}, ttl_seconds=TOKEN_TTL_SECONDS),
        token_type="Bearer",
        base_url=services.settings.base_url + "/cdn",
        expires_at=expires.isoformat(),
    )


def uploader(services: Services, authorization: str | None) -> str:
    """The owner behind a CDN upload: a CDN bearer token, or an API key."""
    scheme, _, credential = (authorization or "").partition(" ")
    if scheme.lower() == "bearer":
        claims = services.tokens.verify(credential.strip())
        if claims is None or claims.get("kind") != "cdn":
            raise Unauthorized("The upload token is invalid or expired; request a new one")
        return claims["owner"]
    return services.keys.owner(authorization)


@router.post(
    "/cdn/files/upload",
    response_model=UploadedFile,
    responses=error_responses(400, 401, 413),
    openapi_extra=BINARY_BODY,
)
async def upload_file(
    request: Request,
    services: ServicesDep,
    authorization: Annotated[str | None, Header()] = None,
    content_type: Annotated[str | None, Header()] = None,
    file_name: Annotated[str | None, Header(alias="X-Fal-File-Name")] = None,
) -> UploadedFile:
    owner = uploader(services, authorization)
    begin = partial(
        services.files.begin_upload,
        owner,
        upload_limits(services.settings),
        content_type=content_type or "application/octet-stream",
        file_name=file_name,
    )
    stored = await receive_into(request, await run_in_threadpool(begin))
    return UploadedFile(access_url=services.files.url(stored))


@router.post("/rest/storage/upload/initiate", response_model=UploadTarget, responses=error_responses(401))
def initiate_upload(
    body: UploadInitiate,
    services: ServicesDep,
    owner: OwnerDep,
    storage_type: Annotated[str | None, Query()] = None,
) -> UploadTarget:
    """A signed URL to PUT the file to (once), and the URL it will have."""
    file_id = new_file_id()
    file_name = safe_file_name(body.file_name)
    claims = {
        "kind": "upload",
        "file_id": file_id,
        "file_name": file_name,
        "content_type": body.content_type,
        "owner": owner,
    }
    token = services.tokens.sign(claims, ttl_seconds=TOKEN_TTL_SECONDS)
    base = services.settings.base_url
    return UploadTarget(upload_url=f"{base}/cdn/uploads/{file_id}?token={token}", file_url=f"{base}/files/{file_id}/{file_name}")


@router.put(
    "/cdn/uploads/{file_id}",
    responses=error_responses(400, 401, 403, 413),
    openapi_extra=BINARY_BODY,
)
async def put_upload(request: Request, services: ServicesDep, file_id: str, token: str) -> dict[str, str]:
    """Stores the body as the file `initiate` named; a second PUT to the same URL is refused (403)."""
    claims = services.tokens.verify(token)
    if claims is None or claims.get("kind") != "upload" or claims.get("file_id") != file_id:
        raise Unauthorized("The upload URL is invalid or expired; initiate the upload again")
    begin = partial(
        services.files.begin_upload,
        claims.get("owner", ANONYMOUS),
        upload_limits(services.settings),
        content_type=claims["content_type"],
        file_name=claims["file_name"],
        file_id=file_id,
    )
    await receive_into(request, await run_in_threadpool(begin))
    return {}


# -- multipart uploads: the Python client ---------------------------------------------------------


@router.post(
    "/cdn/files/upload/multipart",
    response_model=MultipartCreated,
    responses=error_responses(401, 413),
)
def create_multipart_upload(
    services: ServicesDep,
    authorization: Annotated[str | None, Header()] = None,
    content_type: Annotated[str | None, Header()] = None,
    file_name: Annotated[str | None, Header(alias="X-Fal-File-Name")] = None,
) -> MultipartCreated:
    """Starts a multipart upload; the file will be at `access_url` once it is completed."""
    owner = uploader(services, authorization)
    session = services.files.create_multipart(
        owner,
        upload_limits(services.settings),
        content_type=content_type or "application/octet-stream",
        file_name=file_name,
    )
    return MultipartCreated(
        access_url=services.files.file_url(session.file_id, session.file_name), uploadId=session.upload_id
    )


@router.put(
    "/files/{file_id}/{file_name}/multipart/{upload_id}/{part_number}",
    response_model=UploadedPart,
    responses=error_responses(400, 401, 404, 413),
    openapi_extra=BINARY_BODY,
)
async def put_part(
    request: Request,
    response: Response,
    services: ServicesDep,
    file_id: str,
    file_name: str,
    upload_id: str,
    part_number: int,
    authorization: Annotated[str | None, Header()] = None,
) -> UploadedPart:
    """Stores one part (sending a part again replaces it); its etag is in the `ETag` header."""
    owner = uploader(services, authorization)
    return await receive_part(request, response, services, upload_id, file_id, owner, part_number)


@router.post(
    "/files/{file_id}/{file_name}/multipart/{upload_id}/complete",
    response_model=UploadedFile,
    responses=error_responses(400, 401, 404, 413),
)
def complete_multipart_upload(
    body: MultipartComplete,
    services: ServicesDep,
    file_id: str,
    file_name: str,
    upload_id: str,
    authorization: Annotated[str | None, Header()] = None,
) -> UploadedFile:
    """Joins the listed parts into the file at `access_url`."""
    owner = uploader(services, authorization)
    return complete_parts(services, body, upload_id, file_id, owner)


# -- multipart uploads: the JS client -------------------------------------------------------------


@router.post(
    "/rest/storage/upload/initiate-multipart",
    response_model=UploadTarget,
    responses=error_responses(401, 413),
)
def initiate_multipart_upload(
    body: UploadInitiate,
    services: ServicesDep,
    owner: OwnerDep,
    storage_type: Annotated[str | None, Query()] = None,
) -> UploadTarget:
    """A signed URL whose `/{n}` takes the parts and `/complete` joins them, and the file's URL."""
    session = services.files.create_multipart(
        owner, upload_limits(services.settings), content_type=body.content_type, file_name=body.file_name
    )
    claims = {"kind": "multipart", "upload_id": session.upload_id, "file_id": session.file_id, "owner": owner}
    token = services.tokens.sign(claims, ttl_seconds=MULTIPART_TOKEN_TTL_SECONDS)
    return UploadTarget(
        upload_url=f"{services.settings.base_url}/cdn/multipart/{session.upload_id}?token={token}",
        file_url=services.files.file_url(session.file_id, session.file_name),
    )


def multipart_claims(services: Services, upload_id: str, token: str) -> dict[str, Any]:
    claims = services.tokens.verify(token)
    if claims is None or claims.get("kind") != "multipart" or claims.get("upload_id") != upload_id:
        raise Unauthorized("The upload URL is invalid or expired; initiate the upload again")
    return claims


@router.put(
    "/cdn/multipart/{upload_id}/{part_number}",
    response_model=UploadedPart,
    responses=error_responses(400, 401, 404, 413),
    openapi_extra=BINARY_BODY,
)
async def put_signed_part(
    request: Request, response: Response, services: ServicesDep, upload_id: str, part_number: int, token: str
) -> UploadedPart:
    """Stores one part (sending a part again replaces it); the body answers its etag."""
    claims = multipart_claims(services, upload_id, token)
    return await receive_part(request, response, services, upload_id, claims["file_id"], claims["owner"], part_number)


@router.post(
    "/cdn/multipart/{upload_id}/complete",
    response_model=UploadedFile,
    responses=error_responses(400, 401, 404, 413),
)
def complete_signed_multipart_upload(
    body: MultipartComplete, services: ServicesDep, upload_id: str, token: str
) -> UploadedFile:
    """Joins the listed parts into the file at the `file_url` that initiate returned."""
    claims = multipart_claims(services, upload_id, token)
    return complete_parts(services, body, upload_id, claims["file_id"], claims["owner"])


async def receive_part(
    request: Request,
    response: Response,
    services: Services,
    upload_id: str,
    file_id: str,
    owner: str,
    part_number: int,
) -> UploadedPart:
    begin = partial(
        services.files.begin_part, upload_id, file_id, owner, part_number, upload_limits(services.settings)
    )
    etag = await receive_into(request, await run_in_threadpool(begin))
    response.headers["ETag"] = etag
    return UploadedPart(partNumber=part_number, etag=etag)


def complete_parts(services: Services, body: MultipartComplete, upload_id: str, file_id: str, owner: str) -> UploadedFile:
    parts = [(part.partNumber, part.etag) for part in body.parts]
    stored = services.files.complete_multipart(upload_id, file_id, owner, parts, upload_limits(services.settings))
    return UploadedFile(access_url=services.files.url(stored))


@router.get(
    "/files/{file_id}/{file_name}",
    response_class=FileResponse,
    responses={307: {"description": "The file is at `Location` (an object store's presigned or public URL)"}, 404: {"model": ErrorBody}},
)
def download_file(services: ServicesDep, file_id: str, file_name: str) -> Response:
    """The stored file: from local disk, streamed from the object store, or a redirect to it
    (`KILN_S3_URLS`)."""
    stored = services.files.open(file_id)
    if stored is None:
        raise NotFound("File not found")
    inline = stored.content_type in INLINE_TYPES
    media_type = stored.content_type if inline else "application/octet-stream"
    headers = {"X-Content-Type-Options": "nosniff", "Cache-Control": "public, max-age=31536000, immutable"}
    if stored.path is not None:
        return FileResponse(
            stored.path,
            media_type=media_type,
            filename=stored.file_name,
            content_disposition_type="inline" if inline else "attachment",
            headers=headers,
        )
    location = services.files.redirect_url(stored)
    if location is not None:
        # the address changes with every presigning: only the Kiln URL is cached
        return RedirectResponse(location, status_code=307, headers={"Cache-Control": "private, max-age=60"})
    body = services.files.iter_bytes(stored)
    if body is None:
        raise NotFound("File not found")
    disposition, quoted = "inline" if inline else "attachment", quote(stored.file_name)
    name = f'filename="{stored.file_name}"' if quoted == stored.file_name else f"filename*=utf-8''{quoted}"
    headers.update({"Content-Length": str(stored.size), "Content-Disposition": f"{disposition}; {name}"})
    return StreamingResponse(body, media_type=media_type, headers=headers)
