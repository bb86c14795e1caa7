"""The knowledge base over the admin API: upload files, list documents, remove one, read the
last ingest's report.

Uploads go through the same `KnowledgeBaseBuilder.ingest` as `supportbot kb ingest` (the
same loaders, the same per-file errors, the same atomic switch of `CURRENT`), so every
worker's live reload (server/index_reload.py) picks them up; this worker swaps at once.
An upload is one file per request, its bytes the body (`PUT .../files/{filename}`), kept in
DATA_DIR/kb-uploads under that name: uploading the same name again updates the document.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Request
from fastapi import Path as PathParam
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from knowledge_base.builder import EMPTY_INDEX_KEY, IngestReport, KnowledgeBaseBuilder, read_last_report
from knowledge_base.loaders import SUPPORTED_EXTENSIONS
from retrieval.index_files import IndexFormatError, current_version_dir, read_manifest
from server.api_contract import ALWAYS, AUTH, errors
from server.auth import AdminDep, Principal
from server.index_reload import IndexReloader
from server.settings import Settings

router = APIRouter(prefix="/v1/admin/kb", responses=errors(*ALWAYS))
# A bare file name with an extension: no separators, not hidden, never two dots in a row.
FILE_NAME_PATTERN = r"^[A-Za-z0-9]([ .]?[A-Za-z0-9_-])*\.[A-Za-z0-9]{1,10}$"
_TEXT_EXTENSIONS = {".md", ".markdown", ".txt", ".html", ".htm", ".csv", ".jsonl"}
# Magic numbers of files people upload by mistake: a Word file named .txt is not text.
_BINARY_MAGIC = (b"%PDF-", b"PK\x03\x04", b"\x89PNG", b"\xff\xd8\xff", b"GIF8", b"\xd0\xcf\x11\xe0", b"\x1f\x8b")


def _builder(request: Request) -> tuple[Settings, KnowledgeBaseBuilder, IndexReloader]:
    state = request.app.state
    if getattr(state, "kb_builder", None) is None:
        raise HTTPException(503, "the server is starting; try again shortly")
    return state.settings, state.kb_builder, state.index_reloader


async def _audit(request: Request, who: Principal, action: str, target: str, **details: Any) -> None:
    source = request.client.host if request.client else ""
    await request.app.state.audit.record(who.name, who.role, action, target, source, details)


def _refuse_type(name: str, head: bytes) -> str | None:
    """Why this file is not one the loaders read (415), or None. Cheap: extension and first bytes."""
    extension = Path(name).suffix.lower()
    if extension not in SUPPORTED_EXTENSIONS:
        return f"{name}: unsupported file type {extension!r}; supported: {', '.join(SUPPORTED_EXTENSIONS)}"
    if extension == ".pdf" and not head.startswith(b"%PDF-"):
        return f"{name}: the content is not a PDF (it does not start with %PDF-)"
    if extension in _TEXT_EXTENSIONS and (b"\x00" in head or head.startswith(_BINARY_MAGIC)):
        return f"{name}: binary content in a {extension} file; upload it as text (UTF-8)"
    return None


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise HTTPException(413, {"code": "too_large", "message": f"the file is {int(declared)} bytes; the limit is {limit}"})
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise HTTPException(413, {"code": "too_large", "message": f"the file is over the limit of {limit} bytes"})
        chunks.append(chunk)
    return b"".join(chunks)


def _ingest_upload(builder: KnowledgeBaseBuilder, path: Path, data: bytes) -> IngestReport:
    """Put `data` at `path` and ingest it; a file the loaders refuse leaves the old file (and index) as they were."""
    path.parent.mkdir(parents=True, exist_ok=True)
    old = path.read_bytes() if path.is_file() else None
    staging = path.with_name(f".{path.name}.{uuid.uuid4().hex}")
    staging.write_bytes(data)
    os.replace(staging, path)
    report = builder.ingest([path])
    if report.errors:
        if old is None:
            path.unlink(missing_ok=True)
        else:
            path.write_bytes(old)
    return report


def _named(report: IngestReport, path: Path, name: str) -> dict[str, Any]:
    """The report with the server's path of the upload shown as the name the client sent."""
    body = report.as_dict()
    body["errors"] = {name if key == str(path) else key: why for key, why in report.errors.items()}
    return body


@router.put(
    "/files/{filename}",
    status_code=201,
    responses={200: {"description": "An existing document was updated (or was unchanged)."}, **errors(*AUTH, 413, 415)},
    openapi_extra={
        "requestBody": {
            "required": True,
            "description": "The file's bytes (Markdown, HTML, text, PDF, FAQ CSV/JSONL).",
            "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
        }
    },
)
async def upload(
    filename: Annotated[str, PathParam(max_length=120, pattern=FILE_NAME_PATTERN)], request: Request, caller: AdminDep
) -> JSONResponse:
    """Add or update the document(s) in one file; 201 when added, 200 when updated or unchanged.

    413: larger than SUPPORTBOT_KB_UPLOAD_MAX_BYTES; 415: a type the loaders do not read
    (extension, or content that is not what the extension says); 422: the loader refused it
    (the reason, as `kb ingest` prints it), and nothing changed.
    """
    settings, builder, reloader = _builder(request)
    data = await _read_body(request, settings.kb_upload_max_bytes)
    refused = _refuse_type(filename, data[:8192])
    if refused:
        raise HTTPException(415, {"code": "unsupported_type", "message": refused})
    path = settings.kb_uploads_dir.resolve() / filename
    try:
        report = await run_in_threadpool(_ingest_upload, builder, path, data)
    except IndexFormatError as exc:
        raise HTTPException(503, {"code": "index_unreadable", "message": str(exc)}) from None
    body = _named(report, path, filename)
    if report.errors:
        message = "; ".join(f"{name}: {why}" for name, why in body["errors"].items())
        raise HTTPException(422, {"code": "not_ingested", "message": message, "report": body})
    await reloader.check()
    await _audit(request, caller, "kb.upload", filename, added=report.added, updated=report.updated, version=report.version)
    return JSONResponse(body, status_code=201 if report.added else 200)


@router.get("/documents", responses=errors(*AUTH))
async def list_documents(request: Request, caller: AdminDep) -> dict[str, Any]:
    """The documents of the newest index version, with their chunk counts, and the version each worker serves."""
    settings, _, _ = _builder(request)

    def read() -> dict[str, Any]:
        version_dir = current_version_dir(settings.index_root)
        if version_dir is None:
            return {"version": None, "document_count": 0, "chunk_count": 0, "documents": []}
        manifest = read_manifest(version_dir)
        documents = [
            {"id": doc_id, **entry.model_dump(exclude={"content_hash", "source"}), "source": Path(entry.source).name}
            for doc_id, entry in sorted(manifest.documents.items())
        ]
        return {
            "version": manifest.version,
            "created_at": manifest.created_at.isoformat(),
            "document_count": manifest.document_count,
            "chunk_count": manifest.chunk_count,
            "documents": documents,
        }

    try:
        listing = await run_in_threadpool(read)
    except IndexFormatError as exc:
        raise HTTPException(503, {"code": "index_unreadable", "message": str(exc)}) from None
    return {**listing, "served_version": request.app.state.retriever.snapshot.version}


@router.delete("/documents/{document_id:path}", responses=errors(*AUTH, 404, 409))
async def remove_document(document_id: str, request: Request, caller: AdminDep) -> dict[str, Any]:
    """Remove a document (a FAQ file's id removes all its entries); its uploaded file goes too."""
    settings, builder, reloader = _builder(request)
    uploads = settings.kb_uploads_dir.resolve()

    def remove() -> tuple[IngestReport, list[str]]:
        version_dir = current_version_dir(settings.index_root)
        sources = read_manifest(version_dir).documents if version_dir else {}
        report = builder.remove([document_id])
        remaining = {e.source for d, e in sources.items() if d not in report.removed}
        deleted = []
        for doc_id in report.removed:
            source = Path(sources[doc_id].source)
            if source.parent == uploads and str(source) not in remaining and source.is_file():
                source.unlink()
                deleted.append(source.name)
        return report, deleted

    try:
        report, deleted = await run_in_threadpool(remove)
    except IndexFormatError as exc:
        raise HTTPException(503, {"code": "index_unreadable", "message": str(exc)}) from None
    if EMPTY_INDEX_KEY in report.errors:
        raise HTTPException(409, {"code": "last_document", "message": report.errors[EMPTY_INDEX_KEY]})
    if not report.removed:
        raise HTTPException(404, {"code": "unknown_document", "message": f"no document {document_id!r} in the index"})
    await reloader.check()
    await _audit(request, caller, "kb.remove", document_id, removed=report.removed, version=report.version)
    return {**report.as_dict(), "files_deleted": deleted}


@router.get("/reports/last", responses=errors(*AUTH, 404))
async def last_report(request: Request, caller: AdminDep) -> dict[str, Any]:
    """What the latest ingest or removal did, from the CLI or this API: added, updated, removed, errors per file."""
    settings, _, _ = _builder(request)
    report = await run_in_threadpool(read_last_report, settings.index_root)
    if report is None:
        raise HTTPException(404, {"code": "no_report", "message": "nothing has been ingested or removed yet"})
    return report
