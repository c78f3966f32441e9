"""A blob store in an OCI distribution registry (e.g. Debian's docker-registry), shared by
every controller replica.

Blobs live in one repository (viridian/blobs by default). Each is uploaded whole by a
monolithic PUT streamed from the push's spool file, then a one-layer OCI manifest that
references it is tagged sha256-<hex>: a registry's garbage collector drops blobs no manifest
references, and the tag list is also how the blobs are enumerated. Reads use Range for
offsets. Deleting removes the manifest, then the blob (the registry needs delete enabled).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import shutil
import ssl
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
from yarl import URL

from controller.errors import InvalidArgument, NotFound, OutOfRange, Unavailable
from controller.images.blobstore import CHUNK, Spool, hex_of

REPOSITORY = "viridian/blobs"
MANIFEST_TYPE = "application/vnd.oci.image.manifest.v1+json"
CONFIG_TYPE = "application/vnd.oci.image.config.v1+json"
LAYER_TYPE = "application/vnd.oci.image.layer.v1.tar"
EMPTY_CONFIG = b"{}"
EMPTY_CONFIG_DIGEST = "sha256:" + hashlib.sha256(EMPTY_CONFIG).hexdigest()
TAG_PAGE = 1000
_NEXT = re.compile(r"<([^>]+)>\s*;\s*rel=\"?next\"?")


def manifest_for(digest: str, size: int) -> bytes:
    """The manifest that keeps one blob referenced (deterministic: same blob, same bytes)."""
    body = {
        "schemaVersion": 2,
        "mediaType": MANIFEST_TYPE,
        "config": {"mediaType": CONFIG_TYPE, "digest": EMPTY_CONFIG_DIGEST,
                   "size": len(EMPTY_CONFIG)},
        "layers": [{"mediaType": LAYER_TYPE, "digest": digest, "size": size}],
    }
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


def tag_of(digest: str) -> str:
    return "sha256-" + hex_of(digest)


class RegistryBlobStore:
    shared = True

    def __init__(self, url: str, spool_dir: Path, ca: Path | None = None,
                 repository: str = REPOSITORY, timeout_s: float = 30.0) -> None:
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"blob registry {url!r}: expected http:// or https://")
        self.base = url.rstrip("/") + f"/v2/{repository}"
        self.root = url.rstrip("/")
        self.spool_dir = spool_dir
        self._ca = ca
        self._timeout = timeout_s
        self._session: aiohttp.ClientSession | None = None
        self._added: dict[str, float] = {}  # digest -> when this replica stored or touched it

    async def start(self) -> None:
        await asyncio.to_thread(self._prepare)
        ssl_ctx: ssl.SSLContext | bool = True
        if self._ca is not None:
            ssl_ctx = ssl.create_default_context(cafile=str(self._ca))
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=ssl_ctx),
            timeout=aiohttp.ClientTimeout(sock_connect=self._timeout, sock_read=self._timeout))

    def _prepare(self) -> None:
        shutil.rmtree(self.spool_dir, ignore_errors=True)  # pushes a crash interrupted
        self.spool_dir.mkdir(parents=True, exist_ok=True)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("registry blob store not started")
        return self._session

    async def _request(self, method: str, url: str, **kwargs: Any) -> aiohttp.ClientResponse:
        try:
            return await self.session.request(method, url, **kwargs)
        except (aiohttp.ClientError, TimeoutError) as err:
            raise Unavailable(f"blob registry {self.root}: {err or type(err).__name__}") \
                from None

    @staticmethod
    async def _fail(resp: aiohttp.ClientResponse, what: str) -> Unavailable:
        text = (await resp.text(errors="replace"))[:200].replace("\n", " ")
        return Unavailable(f"blob registry: {what}: HTTP {resp.status} {text}")

    async def has(self, digest: str) -> bool:
        return await self.size(digest) is not None

    async def size(self, digest: str) -> int | None:
        hex_of(digest)
        async with await self._request("HEAD", f"{self.base}/blobs/{digest}") as resp:
            if resp.status == 404:
                return None
            if resp.status != 200:
                raise await self._fail(resp, f"HEAD {digest}")
            return int(resp.headers.get("Content-Length", "0"))

    async def open_read(self, digest: str, offset: int = 0) -> AsyncIterator[bytes]:
        size = await self.size(digest)
        if size is None:
            raise NotFound(f"no image content {digest} in the blob registry")
        if offset > size:
            raise OutOfRange(f"offset {offset} is past the end of {digest} ({size} bytes)")
        if offset == size:
            return
        headers = {"Range": f"bytes={offset}-"} if offset else {}
        async with await self._request("GET", f"{self.base}/blobs/{digest}",
                                       headers=headers) as resp:
            if resp.status == 404:
                raise NotFound(f"no image content {digest} in the blob registry")
            if resp.status not in (200, 206) or (offset and resp.status != 206):
                raise await self._fail(resp, f"GET {digest} from {offset}")
            buf = bytearray()
            async for data in resp.content.iter_chunked(CHUNK):
                buf += data
                while len(buf) >= CHUNK:
                    yield bytes(buf[:CHUNK])
                    del buf[:CHUNK]
            if buf:
                yield bytes(buf)

    async def spool(self) -> Spool:
        return await asyncio.to_thread(Spool, self.spool_dir, self._commit)

    async def _commit(self, path: Path, digest: str, size: int) -> None:
        if not await self.has(digest):
            await self._upload(digest, size, _file_chunks(path))
        await self._ensure_config()
        await self._tag(digest, size)
        self._added[digest] = time.monotonic()

    async def put_bytes(self, digest: str, data: bytes) -> None:
        async def one() -> AsyncIterator[bytes]:
            yield data

        await self._upload(digest, len(data), one())

    async def _upload(self, digest: str, size: int, body: AsyncIterator[bytes]) -> None:
        async with await self._request("POST", f"{self.base}/blobs/uploads/") as resp:
            if resp.status != 202 or "Location" not in resp.headers:
                raise await self._fail(resp, "starting an upload")
            location = str(resp.url.join(URL(resp.headers["Location"])))
        sep = "&" if "?" in location else "?"
        async with await self._request(
                "PUT", f"{location}{sep}digest={digest}", data=body,
                headers={"Content-Type": "application/octet-stream",
                         "Content-Length": str(size)}) as resp:
            if resp.status != 201:
                raise await self._fail(resp, f"uploading {digest}")

    async def _ensure_config(self) -> None:
        if not await self.has(EMPTY_CONFIG_DIGEST):
            await self.put_bytes(EMPTY_CONFIG_DIGEST, EMPTY_CONFIG)

    async def _tag(self, digest: str, size: int) -> None:
        async with await self._request(
                "PUT", f"{self.base}/manifests/{tag_of(digest)}", data=manifest_for(digest, size),
                headers={"Content-Type": MANIFEST_TYPE}) as resp:
            if resp.status != 201:
                raise await self._fail(resp, f"tagging {digest}")

    async def delete(self, digest: str) -> None:
        size = await self.size(digest)
        if size is not None:
            manifest = manifest_for(digest, size)
            mdigest = "sha256:" + hashlib.sha256(manifest).hexdigest()
            async with await self._request("DELETE", f"{self.base}/manifests/{mdigest}") as r:
                if r.status not in (202, 404):
                    raise await self._fail(r, f"deleting the manifest of {digest}")
        async with await self._request("DELETE", f"{self.base}/blobs/{digest}") as resp:
            if resp.status not in (202, 404):
                raise await self._fail(resp, f"deleting {digest}")
        self._added.pop(digest, None)

    async def digests(self) -> list[str]:
        out: list[str] = []
        url: str | None = f"{self.base}/tags/list?n={TAG_PAGE}"
        while url:
            async with await self._request("GET", url) as resp:
                if resp.status == 404:  # no repository yet
                    return []
                if resp.status != 200:
                    raise await self._fail(resp, "listing tags")
                body = await resp.json(content_type=None)
                link = _NEXT.search(resp.headers.get("Link", ""))
            for tag in body.get("tags") or []:
                if isinstance(tag, str) and tag.startswith("sha256-"):
                    try:
                        out.append("sha256:" + hex_of("sha256:" + tag[7:]))
                    except InvalidArgument:
                        continue
            url = f"{self.root}{link.group(1)}" if link and link.group(1).startswith("/") \
                else (link.group(1) if link else None)
        return sorted(out)

    async def touch(self, digest: str) -> None:
        self._added[digest] = time.monotonic()

    async def age(self, digest: str) -> float:
        added = self._added.get(digest)
        return float("inf") if added is None else time.monotonic() - added


async def _file_chunks(path: Path) -> AsyncIterator[bytes]:
    f = await asyncio.to_thread(path.open, "rb")
    try:
        while data := await asyncio.to_thread(f.read, CHUNK):
            yield data
    finally:
        f.close()
