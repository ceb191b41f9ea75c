"""fal's upload protocol and the file server behind every result URL.

Python client (`fal_v3`): `POST /rest/storage/auth/token` for a CDN token, then `POST /cdn/files/upload`
with the bytes. Python fallback and JS client: `POST /rest/storage/upload/initiate` for a signed
`upload_url`, then an unauthenticated `PUT` of the bytes to it. Every stored file is served at
`/files/{id}/{name}`.
"""

from datetime import datetime, timedelta, timezone
from typing import Annotated

from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import FileResponse

from server.deps import OwnerDep, ServicesDep
from server.errors import NotFound, PayloadTooLarge, Unauthorized
from server.files import INLINE_TYPES, new_file_id, safe_file_name
from server.schemas import (
    CdnToken,
    ErrorBody,
    UploadedFile,
    UploadInitiate,
    UploadTarget,
)
from server.services import Services

TOKEN_TTL_SECONDS = 3600.0

router = APIRouter(tags=["storage"])


async def read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"The file is larger than the {limit} bytes this server accepts")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"The file is larger than the {limit} bytes this server accepts")
        chunks.append(chunk)
    return b"".join(chunks)


@router.post("/rest/storage/auth/token", response_model=CdnToken, responses={401: {"model": ErrorBody}})
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
    responses={401: {"model": ErrorBody}, 413: {"model": ErrorBody}},
    openapi_extra={"requestBody": {"content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}},
)
async def upload_file(
    request: Request,
    services: ServicesDep,
    authorization: Annotated[str | None, Header()] = None,
    content_type: Annotated[str | None, Header()] = None,
    file_name: Annotated[str | None, Header(alias="X-Fal-File-Name")] = None,
) -> UploadedFile:
    uploader(services, authorization)
    data = await read_body(request, services.settings.max_upload_bytes)
    stored = services.files.save(data, content_type=content_type or "application/octet-stream", file_name=file_name)
    return UploadedFile(access_url=services.files.url(stored))


@router.post("/rest/storage/upload/initiate", response_model=UploadTarget, responses={401: {"model": ErrorBody}})
def initiate_upload(
    body: UploadInitiate,
    services: ServicesDep,
    owner: OwnerDep,
    storage_type: Annotated[str | None, Query()] = None,
) -> UploadTarget:
    """A signed URL to PUT the file to, and the URL it will have."""
    file_id = new_file_id()
    file_name = safe_file_name(body.file_name)
    claims = {"kind": "upload", "file_id": file_id, "file_name": file_name, "content_type": body.content_type}
    token = services.tokens.sign(claims, ttl_seconds=TOKEN_TTL_SECONDS)
    base = services.settings.base_url
    return UploadTarget(upload_url=f"{base}/cdn/uploads/{file_id}?token={token}", file_url=f"{base}/files/{file_id}/{file_name}")


@router.put(
    "/cdn/uploads/{file_id}",
    responses={401: {"model": ErrorBody}, 413: {"model": ErrorBody}},
    openapi_extra={"requestBody": {"content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}},
)
async def put_upload(request: Request, services: ServicesDep, file_id: str, token: str) -> dict[str, str]:
    claims = services.tokens.verify(token)
    if claims is None or claims.get("kind") != "upload" or claims.get("file_id") != file_id:
        raise Unauthorized("The upload URL is invalid or expired; initiate the upload again")
    data = await read_body(request, services.settings.max_upload_bytes)
    services.files.save(data, content_type=claims["content_type"], file_name=claims["file_name"], file_id=file_id)
    return {}


@router.get("/files/{file_id}/{file_name}", response_class=FileResponse, responses={404: {"model": ErrorBody}})
def download_file(services: ServicesDep, file_id: str, file_name: str) -> FileResponse:
    stored = services.files.open(file_id)
    if stored is None:
        raise NotFound("File not found")
    inline = stored.content_type in INLINE_TYPES
    return FileResponse(
        stored.path,
        media_type=stored.content_type if inline else "application/octet-stream",
        filename=stored.file_name,
        content_disposition_type="inline" if inline else "attachment",
        headers={"X-Content-Type-Options": "nosniff", "Cache-Control": "public, max-age=31536000, immutable"},
    )
