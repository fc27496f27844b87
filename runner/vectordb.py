"""Vector databases behind one small interface: an embedded one by default, its server given a URL.

embx talks to a vector database through :class:`VectorIndex` (a collection: upsert, get, query, delete, its
metadata) opened by :func:`open_collection`. The one implementation is Chroma (``chromadb``): its
``PersistentClient`` keeps an HNSW index in a folder with no server; the same package runs that database as a
server (``chroma run --path DIR --port N``), reached with ``http://host:port`` through ``HttpClient``, and the
code path above the client is the same. Another database is added by implementing the Protocol and a branch in
:func:`open_collection`.

Embeddings are always passed explicitly (no embedding function is ever downloaded) and telemetry is off.
Scores are inner products: collections use Chroma's ``ip`` space (distance = 1 - dot product), so a normalised
model's score is its cosine, as in embx's exact search.
"""

from __future__ import annotations

import logging
import os
import re
import socket
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import urlsplit

if TYPE_CHECKING:
    import numpy as np

log = logging.getLogger(__name__)

CONNECT_TIMEOUT = 5.0
"""Seconds to wait for a server's TCP port before reporting it unreachable."""
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{1,510}[A-Za-z0-9]$")


class VectorDBError(Exception):
    """The vector database cannot be used as asked (unreachable, a bad name, a mismatched collection)."""


@dataclass(frozen=True)
class Location:
    """Where a vector database is: an embedded folder, or a server.

    Attributes:
        kind: "embedded" or "server".
        path: The folder (embedded).
        host: Server host name.
        port: Server port.
        ssl: Whether the server speaks https.
        token: Credential from the URL's password (sent as a bearer token; never shown).

    """

    kind: str
    path: Path | None = None
    host: str = ""
    port: int = 0
    ssl: bool = False
    token: str | None = None

    def __str__(self) -> str:
        """The location as shown to users: a server URL without its credentials."""
        if self.kind == "embedded":
            return str(self.path)
        return f"{'https' if self.ssl else 'http'}://{self.host}:{self.port}"


def parse_location(uri: str | Path) -> Location:
    """A folder path, or ``http(s)://[user:token@]host[:port]`` for a server (default port 8000).

    Raises:
        VectorDBError: For a URL with another scheme or no host.

    """
    text = str(uri)
    if "://" not in text:
        return Location("embedded", path=Path(text).expanduser().resolve())
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise VectorDBError(f"{redact(text)}: a server URL is http://host:port or https://host:port")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 8000)
    except ValueError:
        raise VectorDBError(f"{redact(text)}: the port is not a number in 1-65535") from None
    return Location("server", host=parts.hostname, port=port, ssl=parts.scheme == "https", token=parts.password)


def redact(uri: str) -> str:
    """A URL with any user name and password replaced by ``***`` (safe to print and store)."""
    return re.sub(r"(://)[^/@]*@", r"\1***@", uri)


def check_name(name: str) -> str:
    """A collection name Chroma accepts (3-512 of A-Z a-z 0-9 . _ -, alphanumeric at both ends).

    Raises:
        VectorDBError: Naming what is wrong.

    """
    if not NAME.match(name) or ".." in name:
        raise VectorDBError(
            f"collection name {name!r}: use 3-512 letters, digits, '.', '_' or '-', starting and ending with a letter"
            " or digit (choose one with --name)"
        )
    return name


@dataclass
class Hit:
    """One search result: a point's id, its score (inner product), text and metadata."""

    id: str
    score: float
    text: str
    meta: dict[str, Any]


class VectorIndex(Protocol):
    """A collection of points (id, vector, text, metadata) in a vector database."""

    name: str
    location: Location

    def metadata(self) -> dict[str, Any]:
        """The collection's own metadata (what built it)."""
        ...

    def set_metadata(self, meta: dict[str, Any]) -> None:
        """Replace the collection's metadata."""
        ...

    def count(self) -> int:
        """Number of points."""
        ...

    def existing(self, ids: Sequence[str]) -> set[str]:
        """Which of `ids` are stored."""
        ...

    def all_ids(self, page: int = 10_000) -> Iterator[str]:
        """Every stored id, a page at a time."""
        ...

    def upsert(self, ids: list[str], vectors: np.ndarray, texts: list[str], metas: list[dict[str, Any]]) -> None:
        """Insert or replace points."""
        ...

    def delete(self, ids: list[str]) -> None:
        """Remove points."""
        ...

    def search(self, vectors: np.ndarray, k: int, where: dict[str, Any] | None = None) -> list[list[Hit]]:
        """The approximate top-k of each query vector, best first, optionally filtered on metadata."""
        ...

    def size_bytes(self) -> int | None:
        """Bytes on disk of the database folder (embedded), None for a server."""
        ...

    def set_ef_search(self, ef: int) -> None:
        """The breadth of later searches (HNSW ef_search), kept with the collection."""
        ...


class ChromaIndex:
    """A Chroma collection (embedded or server) as a :class:`VectorIndex`."""

    def __init__(self, client: Any, collection: Any, *, location: Location) -> None:
        self.client, self.collection, self.location = client, collection, location
        self.name: str = collection.name

    def metadata(self) -> dict[str, Any]:
        """The collection's own metadata (what built it)."""
        return dict(self.collection.metadata or {})

    def set_metadata(self, meta: dict[str, Any]) -> None:
        """Replace the collection's metadata (Chroma merges keys: every key embx writes is always given)."""
        self.collection.modify(metadata=meta)

    def count(self) -> int:
        """Number of points."""
        return int(self.collection.count())

    def existing(self, ids: Sequence[str]) -> set[str]:
        """Which of `ids` are stored."""
        if not ids:
            return set()
        return set(self.collection.get(ids=list(ids), include=[])["ids"])

    def all_ids(self, page: int = 10_000) -> Iterator[str]:
        """Every stored id, a page at a time (memory: one page)."""
        offset = 0
        while True:
            ids = self.collection.get(limit=page, offset=offset, include=[])["ids"]
            yield from ids
            if len(ids) < page:
                return
            offset += page

    def upsert(self, ids: list[str], vectors: np.ndarray, texts: list[str], metas: list[dict[str, Any]]) -> None:
        """Insert or replace points, in pieces the client accepts."""
        step = max(1, int(self.client.get_max_batch_size()))
        for start in range(0, len(ids), step):
            piece = slice(start, start + step)
            self.collection.upsert(
                ids=ids[piece], embeddings=vectors[piece], documents=texts[piece], metadatas=metas[piece]
            )

    def delete(self, ids: list[str]) -> None:
        """Remove points."""
        step = max(1, int(self.client.get_max_batch_size()))
        for start in range(0, len(ids), step):
            self.collection.delete(ids=ids[start : start + step])

    def search(self, vectors: np.ndarray, k: int, where: dict[str, Any] | None = None) -> list[list[Hit]]:
        """The approximate top-k of each query vector (HNSW), best first; score = 1 - Chroma's ip distance."""
        found = self.collection.query(
            query_embeddings=vectors, n_results=k, where=where or None, include=["documents", "metadatas", "distances"]
        )
        return [
            [Hit(i, 1.0 - float(d), t or "", dict(m or {})) for i, d, t, m in zip(ids, dists, texts, metas)]
            for ids, dists, texts, metas in zip(
                found["ids"], found["distances"], found["documents"], found["metadatas"]
            )
        ]

    def set_ef_search(self, ef: int) -> None:
        """Keep HNSW ef_search `ef` with the collection (Chroma applies it in processes that open it afterwards)."""
        self.collection.modify(configuration={"hnsw": {"ef_search": ef}})

    def size_bytes(self) -> int | None:
        """Bytes on disk of the whole database folder (embedded), None for a server."""
        if self.location.kind != "embedded" or self.location.path is None:
            return None
        return sum(p.stat().st_size for p in self.location.path.rglob("*") if p.is_file())


def connect(location: Location) -> Any:
    """A Chroma client for the location (telemetry off); a server is probed first so a dead one fails in seconds.

    Raises:
        VectorDBError: The server cannot be reached, or the folder cannot be opened.

    """
    os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")
    import chromadb
    from chromadb.config import Settings

    settings = Settings(anonymized_telemetry=False)
    if location.kind == "embedded":
        assert location.path is not None
        if location.path.exists() and not location.path.is_dir():
            raise VectorDBError(f"{location.path} is a file, not a vector database folder")
        try:
            return chromadb.PersistentClient(path=str(location.path), settings=settings)
        except Exception as exc:  # chromadb raises several kinds for an unusable folder
            raise VectorDBError(f"cannot open the vector database folder {location.path}: {exc}") from None
    try:
        with socket.create_connection((location.host, location.port), timeout=CONNECT_TIMEOUT):
            pass
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise VectorDBError(
            f"cannot reach the vector database server at {location} within {CONNECT_TIMEOUT:.0f} s ({reason});"
            " is it running (chroma run --path DIR --port N)?"
        ) from None
    headers = {"Authorization": f"Bearer {location.token}"} if location.token else None
    try:
        return chromadb.HttpClient(
            host=location.host, port=location.port, ssl=location.ssl, headers=headers, settings=settings
        )
    except Exception as exc:  # the port answers but is not a Chroma server (or refuses the credentials)
        reason = str(exc).replace(location.token or "\0", "***") or type(exc).__name__
        raise VectorDBError(f"the server at {location} does not answer as a Chroma server: {reason}") from None


def open_collection(
    uri: str | Path, name: str, *, create: bool = False, hnsw: dict[str, int] | None = None
) -> VectorIndex:
    """Open (or create) a collection of the database at `uri`.

    Args:
        uri: A folder (embedded database, created if missing) or a server URL.
        name: The collection.
        create: Create it when missing (inner-product space, the given HNSW settings).
        hnsw: Chroma HNSW settings for a new collection: ef_construction, ef_search, max_neighbors.

    Raises:
        VectorDBError: Unreachable database, a bad name, or a missing collection (when not `create`).

    """
    from chromadb.errors import NotFoundError

    location = parse_location(uri)
    client = connect(location)
    check_name(name)
    try:
        collection = client.get_collection(name, embedding_function=None)
    except NotFoundError:
        if not create:
            known = ", ".join(sorted(c.name for c in client.list_collections())) or "none"
            raise VectorDBError(f"no index named {name!r} in {location} (indexes there: {known})") from None
        config = {"hnsw": {"space": "ip", **(hnsw or {})}}
        collection = client.create_collection(name, embedding_function=None, configuration=config)
    return ChromaIndex(client, collection, location=location)


def drop_collection(uri: str | Path, name: str) -> bool:
    """Delete a collection if it exists; whether it did."""
    from chromadb.errors import NotFoundError

    client = connect(parse_location(uri))
    try:
        client.delete_collection(check_name(name))
    except NotFoundError:
        return False
    return True
