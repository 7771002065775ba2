"""The repository: content-addressed chunks, indexes and snapshot manifests.

Invariants:
  * An object's name is the BLAKE3 of its plaintext (keyed when the repository is
    encrypted); every read re-checks it.
  * An encrypted repository seals every chunk, index and manifest; its config
    (plain JSON) and its wrapped keys are the only objects stored unsealed.
  * A backup writes chunks, then the index, then the manifest. A snapshot exists
    once its manifest does, so a killed backup leaves only unreferenced chunks,
    which a rerun reuses.
  * Objects are never rewritten in place (writes are atomic in the backend).
"""

from __future__ import annotations

import json
import os
import threading
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Final

from blockvault.errors import (
    AmbiguousLatest,
    AmbiguousSnapshot,
    ChunkCorrupt,
    ChunkMissing,
    IntegrityError,
    KeyFileInvalid,
    KeyMissing,
    ObjectCorrupt,
    ObjectNotFound,
    ObjectTooLarge,
    PassphraseRequired,
    RepositoryError,
    RepositoryExists,
    RepositoryNotFound,
    SnapshotNotFound,
    UsageError,
    WrongPassphrase,
)
from blockvault.repo import format as fmt
from blockvault.repo.crypto import MasterKey, Sealer
from blockvault.repo.index import Index
from blockvault.repo.keys import KeyFile, ScryptParams, unwrap, wrap
from blockvault.repo.manifest import Snapshot
from blockvault.repo.objects import Codec, DecodeError
from blockvault.storage import Backend, open_backend

__all__ = [
    "ENCRYPTIONS",
    "Passphrase",
    "Repository",
    "RepositoryConfig",
    "Selector",
    "SnapshotListing",
    "parse_compression",
]

ENCRYPTIONS: Final = ("none", "repokey")  # repokey: the wrapped key lives in keys/
Passphrase = str | Callable[[], str]  # a callable is asked only if the repository needs it


def parse_compression(spec: str) -> int:
    """``zstd:LEVEL`` (1-22), ``zstd`` (level 3) or ``none`` -> zstd level (0 = none)."""
    name, _, level = spec.partition(":")
    if name == "none" and not level:
        return 0
    if name == "zstd":
        try:
            value = int(level) if level else 3
        except ValueError:
            value = -1
        if 1 <= value <= 22:
            return value
    raise UsageError(f"compression {spec!r}: use zstd:LEVEL with LEVEL 1-22, or none")


@dataclass(frozen=True)
class RepositoryConfig:
    id: str
    chunk_size: int
    compression: str
    encryption: str = "none"  # one of ENCRYPTIONS

    @property
    def encrypted(self) -> bool:
        return self.encryption != "none"

    def to_json(self) -> bytes:
        document: dict[str, object] = {
            "format": fmt.REPOSITORY_FORMAT,
            "version": fmt.VERSION,
            "id": self.id,
            "chunk_size": self.chunk_size,
            "compression": self.compression,
        }
        if self.encrypted:  # unencrypted configs stay exactly as before encryption existed
            document["encryption"] = self.encryption
        return json.dumps(document, indent=1).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> RepositoryConfig:
        data = json.loads(raw)
        if data.get("format") != fmt.REPOSITORY_FORMAT:
            raise ValueError("not a blockvault repository")
        if data.get("version") != fmt.VERSION:
            raise ValueError(f"format version {data.get('version')} is not supported")
        encryption = str(data.get("encryption", "none"))
        if encryption not in ENCRYPTIONS:
            raise ValueError(f"encryption {encryption!r} is not supported")
        chunk_size = int(data["chunk_size"])
        if problem := fmt.chunk_size_problem(chunk_size):
            raise ValueError(problem)
        return cls(str(data["id"]), chunk_size, str(data["compression"]), encryption)


@dataclass(frozen=True)
class Selector:
    """Which snapshots ``latest`` chooses among (the CLI's ``--host`` and ``--source``).

    ``source`` matches a snapshot's identity (``wwn:…``, ``serial:…``, ``image:…``),
    the value after its kind, or the device or image path it was taken from.
    """

    host: str | None = None
    source: str | None = None

    def matches(self, snap: Snapshot) -> bool:
        if self.host is not None and snap.host != self.host:
            return False
        if self.source is None:
            return True
        names = {snap.source, snap.source_id, snap.source_id.partition(":")[2]} - {""}
        return bool(names & {self.source, "image:" + os.path.realpath(self.source)})


@dataclass(frozen=True)
class SnapshotListing:
    """Every snapshot of a repository, damaged ones named rather than raised: one bad
    manifest or missing index must not hide the others (``snapshots``, ``prune``,
    ``latest``). ``blockvault check`` says more about each damage."""

    snapshots: tuple[Snapshot, ...]  # every manifest that reads, oldest first
    damaged: Mapping[str, str] = field(default_factory=dict)  # id -> what is wrong

    def usable(self) -> tuple[Snapshot, ...]:
        """The snapshots whose manifest reads and whose index exists, oldest first."""
        return tuple(s for s in self.snapshots if s.id not in self.damaged)

    def unreadable(self) -> list[str]:
        """Ids of the snapshots whose manifest does not read."""
        readable = {s.id for s in self.snapshots}
        return sorted(i for i in self.damaged if i not in readable)


class Repository:
    def __init__(
        self,
        backend: Backend,
        config: RepositoryConfig,
        master: MasterKey | None = None,
        key_id: str | None = None,
    ) -> None:
        if config.encrypted != (master is not None):
            raise ValueError("an encrypted repository needs its master key, a plain one none")
        self.backend = backend
        self.config = config
        self.location = backend.location
        self._master = master
        self._sealer = Sealer(master) if master is not None else None
        self.key_id = key_id  # the key object this session opened, if encrypted
        self.codec = Codec(parse_compression(config.compression), self._sealer)
        self._known: set[str] | None = None
        self._lock = threading.Lock()
        self.selector = Selector()  # narrows what ``latest`` means

    # --- life cycle --------------------------------------------------------------
    @classmethod
    def init(
        cls,
        location: str,
        *,
        chunk_size: int = fmt.DEFAULT_CHUNK_SIZE,
        compression: str = "zstd:3",
        encryption: str = "none",
        passphrase: Passphrase | None = None,
        kdf: ScryptParams | None = None,
    ) -> Repository:
        """A new, empty repository; ``repokey`` encryption needs a passphrase.

        With encryption the key object is written before the config, so a killed
        init never leaves an encrypted repository without its key.
        """
        parse_compression(compression)
        if problem := fmt.chunk_size_problem(chunk_size):
            raise UsageError(problem)
        if encryption not in ENCRYPTIONS:
            raise UsageError(f"encryption {encryption!r}: use {' or '.join(ENCRYPTIONS)}")
        secret = _ask(passphrase, location) if encryption != "none" else None
        if secret == "":
            raise UsageError("the passphrase is empty; an encrypted repository needs one")
        backend = open_backend(location)
        backend.create()
        if not backend.is_empty():
            raise RepositoryExists(repo=location)
        config = RepositoryConfig(uuid.uuid4().hex, chunk_size, compression, encryption)
        master = key_id = None
        if secret is not None:
            master = MasterKey.generate()
            key = wrap(master, secret, config.id, kdf)
            key_id = key.id
            backend.write(fmt.key_name(key_id), key.to_json())
        backend.write(fmt.CONFIG_NAME, config.to_json())
        repo = cls(backend, config, master, key_id)
        repo._known = set()
        return repo

    @classmethod
    def open(cls, location: str, *, passphrase: Passphrase | None = None) -> Repository:
        """Open an existing repository; the passphrase is used (and asked) only if it is
        encrypted. Raises ``PassphraseRequired``, ``WrongPassphrase`` or ``KeyMissing``."""
        backend = open_backend(location)
        config = _read_config(backend, location)
        key_names = list(backend.list(fmt.KEY_DIR + "/"))
        if not config.encrypted:
            if key_names:
                # someone may have rewritten the config to make us write plaintext
                raise RepositoryError(
                    "the config says unencrypted but the repository holds keys; "
                    "refusing to use it (was the config edited?)",
                    repo=location,
                )
            return cls(backend, config)
        if not key_names:
            raise KeyMissing(repo=location)
        secret = _ask(passphrase, location)
        keys: list[KeyFile] = []
        refused: list[str] = []
        if len(key_names) > fmt.MAX_KEYS:  # each costs a key derivation: bound the work
            refused.append(f"{len(key_names) - fmt.MAX_KEYS} of {len(key_names)} keys not tried")
        for name in sorted(key_names)[: fmt.MAX_KEYS]:
            try:
                keys.append(KeyFile.from_json(_read_small(backend, name, fmt.MAX_KEY_BYTES)))
            except ValueError as exc:  # damaged, or asks too much: the others may open
                refused.append(f"{name}: {exc}")
            except ObjectNotFound:
                continue  # removed while we listed
        if not keys:
            raise ObjectCorrupt(
                "no key object can be used (" + "; ".join(refused) + ")",
                kind="key",
                name=fmt.KEY_DIR,
                repo=location,
            )
        for key in keys:
            if key.repository != config.id:
                continue
            master = unwrap(key, secret)
            if master is not None:
                return cls(backend, config, master, key.id)
        tried = f" ({'; '.join(refused)})" if refused else ""
        raise WrongPassphrase(what=f"any key of repository {location}{tried}", repo=location)

    def with_compression(self, compression: str) -> Repository:
        """The same repository writing new chunks at another compression setting."""
        clone = Repository(self.backend, self.config, self._master, self.key_id)
        clone.codec = Codec(parse_compression(compression), self._sealer)
        clone._known, clone._lock = self._known, self._lock
        clone.selector = self.selector
        return clone

    # --- ids and keys --------------------------------------------------------------
    @property
    def chunk_bound(self) -> int:
        """The most plaintext any chunk of this repository may hold: a disk chunk of the
        configured size, or a file snapshot's object (``fmt.MAX_FILE_OBJECT``)."""
        return max(self.config.chunk_size, fmt.MAX_FILE_OBJECT)

    @property
    def encrypted(self) -> bool:
        return self.config.encrypted

    def chunk_id(self, plaintext: bytes | bytearray | memoryview) -> bytes:
        """The 32-byte id of a chunk: BLAKE3, keyed with the id key when encrypted."""
        return self.codec.id_of(plaintext)

    def _object_id(self, plaintext: bytes) -> str:
        return self.codec.id_of(plaintext).hex()

    def _need_key(self) -> tuple[MasterKey, str]:
        if self._master is None or self.key_id is None:
            raise UsageError(f"repository {self.location} is not encrypted: it has no key")
        return self._master, self.key_id

    def export_key(self) -> bytes:
        """The key file this session opened the repository with, as stored."""
        _, key_id = self._need_key()
        try:
            return self.backend.read(fmt.key_name(key_id), fmt.MAX_KEY_BYTES)
        except ObjectNotFound:
            raise KeyMissing(repo=self.location) from None

    def change_passphrase(self, passphrase: str, kdf: ScryptParams | None = None) -> str:
        """Re-wrap the master key for ``passphrase``: write the new key object, then
        delete the one this session opened (a crash in between leaves both, each
        opening with its own passphrase). Returns the new key id."""
        master, old = self._need_key()
        if not passphrase:
            raise UsageError("the new passphrase is empty")
        key = wrap(master, passphrase, self.config.id, kdf)
        self.backend.write(fmt.key_name(key.id), key.to_json())
        self.key_id = key.id
        self.backend.delete(fmt.key_name(old))
        return key.id

    @classmethod
    def import_key(
        cls, location: str, key_file: bytes, passphrase: Passphrase, *, origin: str = "key file"
    ) -> str:
        """Store an exported key file in the repository (for instance after ``keys/``
        was lost). The key must belong to this repository, open with ``passphrase``
        and decrypt the repository's objects. Returns its key id."""
        backend = open_backend(location)
        config = _read_config(backend, location)
        if not config.encrypted:
            raise UsageError(f"repository {location} is not encrypted; it takes no key")
        try:
            key = KeyFile.from_json(key_file)
        except ValueError as exc:
            raise KeyFileInvalid(str(exc), path=origin) from None
        if key.repository != config.id:
            raise KeyFileInvalid(
                f"it belongs to repository {key.repository}, not to {location} ({config.id})",
                path=origin,
            )
        master = unwrap(key, _ask(passphrase, location))
        if master is None:
            raise WrongPassphrase(what=f"key file {origin}", repo=location)
        repo = cls(backend, config, master, key.id)
        if not repo._key_opens_objects():
            raise KeyFileInvalid(
                f"it does not decrypt the objects of {location}; nothing was imported",
                path=origin,
            )
        backend.write(fmt.key_name(key.id), key.to_json())
        return key.id

    def _key_opens_objects(self) -> bool:
        """Whether one of the first few manifests (else chunks) decrypts; True if empty."""
        probes: tuple[tuple[str, Callable[[str], object]], ...] = (
            (fmt.SNAPSHOT_DIR, self.load_snapshot),
            (fmt.DATA_DIR, self.get_chunk),
        )
        for folder, load in probes:
            names = sorted(self.backend.list(folder + "/"))[:8]
            if not names:
                continue
            for name in names:
                try:
                    load(name.rsplit("/", 1)[1])
                    return True
                except IntegrityError:
                    continue
            return False
        return True

    # --- chunks ------------------------------------------------------------------
    def _known_chunks(self) -> set[str]:
        with self._lock:
            if self._known is None:
                self._known = {
                    name.rsplit("/", 1)[1] for name in self.backend.list(fmt.DATA_DIR + "/")
                }
            return self._known

    def has_chunk(self, chunk_id: str) -> bool:
        return chunk_id in self._known_chunks()

    def put_chunk(
        self, plaintext: bytes | bytearray | memoryview, chunk_id: str | None = None
    ) -> int:
        """Store a chunk unless present; returns the bytes written (0 when deduplicated)."""
        chunk_id = chunk_id or self.chunk_id(plaintext).hex()
        known = self._known_chunks()
        with self._lock:
            if chunk_id in known:
                return 0
            known.add(chunk_id)  # claim it so that concurrent writers skip it
        try:
            data = self.codec.encode(fmt.CHUNK_MAGIC, plaintext, chunk_id)
            self.backend.write_batched(fmt.chunk_name(chunk_id), data)
        except BaseException:
            with self._lock:
                known.discard(chunk_id)
            raise
        return len(data)

    def put_raw_chunk(self, chunk_id: str, stored: bytes) -> int:
        """Store a chunk in its stored form (from a repository using the same ids and
        keys, already verified by ``decode_chunk``) unless present; returns the bytes
        written (0 when deduplicated)."""
        known = self._known_chunks()
        with self._lock:
            if chunk_id in known:
                return 0
            known.add(chunk_id)
        try:
            self.backend.write_batched(fmt.chunk_name(chunk_id), stored)
        except BaseException:
            with self._lock:
                known.discard(chunk_id)
            raise
        return len(stored)

    def read_raw_chunk(self, chunk_id: str) -> bytes:
        """The stored (still compressed) form, as remote copies and multicast move it."""
        try:
            return _read_small(
                self.backend, fmt.chunk_name(chunk_id), _stored_bound(self.chunk_bound)
            )
        except ObjectNotFound:
            raise ChunkMissing(chunk=chunk_id, repo=self.location, where="") from None
        except ValueError as exc:
            raise ChunkCorrupt(str(exc), chunk=chunk_id, repo=self.location, where="") from None

    def decode_chunk(self, chunk_id: str, raw: bytes) -> bytes:
        try:
            return self.codec.decode(fmt.CHUNK_MAGIC, raw, chunk_id, self.chunk_bound)
        except DecodeError as exc:
            raise ChunkCorrupt(str(exc), chunk=chunk_id, repo=self.location, where="") from None

    def get_chunk(self, chunk_id: str) -> bytes:
        """The verified plaintext of a chunk."""
        return self.decode_chunk(chunk_id, self.read_raw_chunk(chunk_id))

    # --- snapshots -----------------------------------------------------------------
    def flush(self) -> None:
        """Make every chunk stored so far durable and listed (see ``Backend.flush``)."""
        self.backend.flush()

    def write_snapshot(self, snapshot: Snapshot, index: Index) -> Snapshot:
        """Write the index, then the manifest (the commit point); returns it with its id.
        Chunks are flushed first: a snapshot never names a chunk that is not durable."""
        self.flush()
        index_plain = index.to_bytes()
        index_id = self._object_id(index_plain)
        self.backend.write(
            fmt.index_name(index_id), self.codec.encode(fmt.INDEX_MAGIC, index_plain, index_id)
        )
        snapshot = replace(snapshot, index=index_id)
        manifest = snapshot.to_json()
        snapshot_id = self._object_id(manifest)
        self.backend.write(
            fmt.snapshot_name(snapshot_id),
            self.codec.encode(fmt.SNAPSHOT_MAGIC, manifest, snapshot_id),
        )
        return replace(snapshot, id=snapshot_id)

    def snapshot_ids(self) -> list[str]:
        """Every manifest's id. A name that is not an id is no snapshot (it may be a
        hostile one, made to be printed): skipped here, named by ``stray_snapshots``."""
        return sorted(n for n in self._snapshot_names() if fmt.is_object_id(n))

    def stray_snapshots(self) -> list[str]:
        """Names under ``snapshots/`` that are not ids, for ``check`` to report."""
        return sorted(n for n in self._snapshot_names() if not fmt.is_object_id(n))

    def _snapshot_names(self) -> list[str]:
        prefix = fmt.SNAPSHOT_DIR + "/"
        return [name[len(prefix) :] for name in self.backend.list(prefix)]

    def load_snapshot(self, snapshot_id: str) -> Snapshot:
        name = fmt.snapshot_name(snapshot_id)
        try:
            raw = _read_small(self.backend, name, _stored_bound(fmt.MAX_MANIFEST_BYTES))
        except ObjectNotFound:
            raise SnapshotNotFound(ref=snapshot_id, repo=self.location) from None
        except ValueError as exc:
            raise ObjectCorrupt(
                str(exc), kind="snapshot", name=snapshot_id, repo=self.location
            ) from None
        try:
            plain = self.codec.decode(fmt.SNAPSHOT_MAGIC, raw, snapshot_id)
            return Snapshot.from_json(plain, snapshot_id)
        except (DecodeError, ValueError, KeyError, TypeError) as exc:
            raise ObjectCorrupt(
                str(exc), kind="snapshot", name=snapshot_id, repo=self.location
            ) from None

    def snapshots(self) -> list[Snapshot]:
        """Every snapshot, oldest first; raises ``ObjectCorrupt`` on a damaged manifest
        (for callers that must see everything, such as verify; see ``listing``)."""
        return sorted((self.load_snapshot(i) for i in self.snapshot_ids()), key=lambda s: s.time)

    def listing(self) -> SnapshotListing:
        """Every snapshot, a damaged manifest or a missing index named, not raised."""
        readable: list[Snapshot] = []
        damaged: dict[str, str] = {}
        for snapshot_id in self.snapshot_ids():
            try:
                readable.append(self.load_snapshot(snapshot_id))
            except SnapshotNotFound:
                continue  # removed while we listed
            except IntegrityError as exc:
                damaged[snapshot_id] = str(exc)
        indexes = {name.rsplit("/", 1)[1] for name in self.backend.list(fmt.INDEX_DIR + "/")}
        for snap in readable:
            if snap.index not in indexes:
                damaged[snap.id] = f"its index {snap.index} is missing"
        readable.sort(key=lambda s: s.time)
        return SnapshotListing(tuple(readable), damaged)

    def resolve(self, ref: str) -> Snapshot:
        """A snapshot by full id, unique id prefix, or ``latest``: the newest usable
        snapshot that ``self.selector`` matches, provided they all share one origin
        (host, disk, partitions); else ``AmbiguousLatest`` lists the origins."""
        if ref == "latest":
            snaps = [s for s in self.listing().usable() if self.selector.matches(s)]
            if not snaps:
                raise SnapshotNotFound(ref=ref, repo=self.location)
            newest: list[Snapshot] = []  # the newest of each origin, newest first
            for snap in reversed(snaps):
                if not any(snap.same_origin(n) for n in newest):
                    newest.append(snap)
            if len(newest) > 1:
                candidates = "; ".join(f"{s.origin}: {s.id[:12]}" for s in newest)
                raise AmbiguousLatest(count=len(newest), candidates=candidates, repo=self.location)
            return snaps[-1]
        matches = [i for i in self.snapshot_ids() if i.startswith(ref.lower())] if ref else []
        if not matches:
            raise SnapshotNotFound(ref=ref, repo=self.location)
        if len(matches) > 1:
            raise AmbiguousSnapshot(ref=ref, count=len(matches), repo=self.location)
        return self.load_snapshot(matches[0])

    def load_index(self, snapshot: Snapshot) -> Index:
        name = fmt.index_name(snapshot.index)
        try:
            raw = _read_small(self.backend, name, _stored_bound(fmt.MAX_INDEX_BYTES))
        except ObjectNotFound:
            raise ObjectCorrupt(
                "index object is missing", kind="index", name=snapshot.index, repo=self.location
            ) from None
        except ValueError as exc:
            raise ObjectCorrupt(
                str(exc), kind="index", name=snapshot.index, repo=self.location
            ) from None
        try:
            plain = self.codec.decode(fmt.INDEX_MAGIC, raw, snapshot.index)
            index = Index.from_bytes(plain)
        except (DecodeError, ValueError) as exc:
            raise ObjectCorrupt(
                str(exc), kind="index", name=snapshot.index, repo=self.location
            ) from None
        if problems := index.disagreements(snapshot):
            raise ObjectCorrupt(
                "; ".join(problems), kind="index", name=snapshot.index, repo=self.location
            )
        return index

    def stored_size(self, chunk_ids: set[str]) -> int:
        """Bytes the given chunks take in storage; a missing chunk takes none (``info``
        still describes a damaged snapshot; ``check`` names what is missing). One
        listing of the chunks with their sizes: asking each chunk's size would be a
        round trip per chunk on S3 or SFTP."""
        return sum(
            size
            for name, size in self.backend.list_sizes(fmt.DATA_DIR + "/")
            if name.rsplit("/", 1)[1] in chunk_ids
        )

    # --- listing and removal (prune, gc, check) -------------------------------------
    def stored_chunk_ids(self) -> set[str]:
        """The ids of every chunk in storage now (one fresh listing, no cache)."""
        return {name.rsplit("/", 1)[1] for name in self.backend.list(fmt.DATA_DIR + "/")}

    def stored_chunk_sizes(self) -> dict[str, int]:
        """Every chunk in storage now with its stored size (one fresh listing)."""
        return {
            name.rsplit("/", 1)[1]: size
            for name, size in self.backend.list_sizes(fmt.DATA_DIR + "/")
        }

    def stored_chunk_size_problem(self, size: int) -> str | None:
        """Why a chunk stored in ``size`` bytes cannot be sound, if it cannot: smaller
        than its envelope header, or larger than any chunk of this repository may be
        stored (a reader refuses it unread)."""
        bound = _stored_bound(self.chunk_bound)
        if size < fmt.ENVELOPE.size:
            header = fmt.ENVELOPE.size
            return f"its stored size, {size} bytes, is smaller than the {header}-byte header"
        if size > bound:
            return f"its stored size, {size} bytes, is more than the {bound} a chunk may take"
        return None

    def forget_known_chunks(self) -> None:
        """Drop the deduplication cache, so that the next backup lists storage afresh
        (after its session marker exists: see docs/FORMAT.md on concurrency)."""
        with self._lock:
            self._known = None

    def delete_snapshot(self, snapshot_id: str) -> None:
        """Remove a manifest (the snapshot is gone; ``gc`` frees what only it used)."""
        self.backend.delete(fmt.snapshot_name(snapshot_id))


def _read_small(backend: Backend, name: str, limit: int) -> bytes:
    """An object of at most ``limit`` bytes; ``ValueError`` when it is larger, found
    by the backend from its size before a byte of it is read."""
    try:
        return backend.read(name, limit)
    except ObjectTooLarge as exc:
        raise ValueError(f"{exc.fields['size']} bytes, more than the {limit} it may have") from None


def _stored_bound(plaintext_bound: int) -> int:
    """The most bytes an object of at most ``plaintext_bound`` bytes of plaintext takes
    in storage: the envelope and seal around it (it is stored uncompressed when zstd
    would not make it smaller)."""
    return plaintext_bound + _ENVELOPE_ALLOWANCE


_ENVELOPE_ALLOWANCE = 4096  # envelope header, nonce and tag take far less


def _read_config(backend: Backend, location: str) -> RepositoryConfig:
    try:
        return RepositoryConfig.from_json(
            _read_small(backend, fmt.CONFIG_NAME, fmt.MAX_CONFIG_BYTES)
        )
    except ObjectNotFound:
        raise RepositoryNotFound(repo=location) from None
    except (ValueError, KeyError, TypeError) as exc:
        raise RepositoryError(f"config is unreadable: {exc}", repo=location) from None


def _ask(passphrase: Passphrase | None, location: str) -> str:
    if passphrase is None:
        raise PassphraseRequired(repo=location)
    return passphrase() if callable(passphrase) else passphrase
