"""The bundle: ``artifacts/<version>/`` holds everything serving needs, and says so.

Every file is recorded in ``manifest.json`` with its sha256; :meth:`Bundle.verify`
refuses a bundle whose files are missing, changed, or that belongs to another
project. A new version is written in a hidden temporary directory and renamed into
place, so a crash never leaves a half-written version behind; every file a later step
adds or replaces is written beside its name and renamed onto it (:func:`atomic_path`). ``artifacts/LATEST``
names the newest complete version.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shared.errors import BundleError

__all__ = ["FORMAT", "Bundle", "Files", "atomic_path", "new_version"]

FORMAT = "recsys-bundle/1"


class Files:
    """The file names of a bundle, in one place."""

    MANIFEST = "manifest.json"
    METRICS = "metrics.json"
    REPORT = "report.md"
    SPEC = "spec.json"
    ETL_STATS = "etl.json"
    FEATURE_MAP = "feature_map.json"
    INTERACTIONS = "interactions.parquet"
    USERS = "users.parquet"
    ITEMS = "items.parquet"
    TWO_TOWER = "two_tower"  # .safetensors + .json
    RANKER = "ranker_{kind}"  # .safetensors + .json, kind in {dcn, deepfm}
    ITEM_EMBEDDINGS = "item_embeddings.npy"  # (I, O + 1) two-tower serving vectors, row 0 = unknown
    USER_EMBEDDINGS = "user_embeddings.npy"  # (U, O + 1) serving vectors of the served histories
    RANKER_HEAD = "ranker_{kind}.onnx"  # shared.models.scoring.ServingHead
    USER_TOWER = "user_tower.onnx"  # shared.models.scoring.UserVectors
    RANKER_SPLIT = (
        "ranker_{kind}.{part}.npy"  # part: user_fields, user_first, item_fields, item_first
    )
    INDEX = "items.faiss"
    RECALL = "recall.parquet"
    HOT = "global_hot.parquet"
    HISTORY = "training_history.json"
    PROBES = "probes.json"  # shared.probes: fixed pairs and the offline scores, per ranker


def new_version() -> str:
    """A sortable, unique version id: UTC time plus a random suffix."""
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + secrets.token_hex(3)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass
class Bundle:
    """One version directory and its manifest."""

    root: Path

    @property
    def version(self) -> str:
        return self.root.name

    def path(self, name: str) -> Path:
        return self.root / name

    # --- creating ----------------------------------------------------------------
    @classmethod
    def create(cls, artifacts: Path, dataset: str, config: dict[str, Any]) -> Bundle:
        """Start a new version in a hidden staging directory; :meth:`publish` moves it in."""
        artifacts.mkdir(parents=True, exist_ok=True)
        staging = artifacts / f".staging-{new_version()}"
        staging.mkdir()
        bundle = cls(staging)
        bundle._write_manifest(
            {
                "format": FORMAT,
                "dataset": dataset,
                "config": config,
                "created_at": time.time(),
                "files": {},
            }
        )
        return bundle

    def finish(self) -> Bundle:
        """Rename the staging directory to its version and point ``LATEST`` at it."""
        if not self.root.name.startswith(".staging-"):
            return self
        final = self.root.parent / self.root.name.removeprefix(".staging-")
        manifest = self.manifest()
        manifest["version"] = final.name
        self._write_manifest(manifest)
        os.replace(self.root, final)
        self.root = final
        _atomic_write(final.parent / "LATEST", final.name.encode())
        return self

    def discard(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)

    def add(self, *names: str) -> None:
        """Record files already written into the bundle (hash them into the manifest)."""
        manifest = self.manifest()
        for name in names:
            p = self.path(name)
            manifest["files"][name] = {"sha256": _sha256(p), "bytes": p.stat().st_size}
        self._write_manifest(manifest)

    def write_json(self, name: str, data: Any) -> None:
        _atomic_write(self.path(name), json.dumps(data, indent=2, default=str).encode())
        self.add(name)

    def update_manifest(self, **fields: Any) -> None:
        manifest = self.manifest()
        for key, value in fields.items():
            if isinstance(value, dict) and isinstance(manifest.get(key), dict):
                manifest[key] = {**manifest[key], **value}
            else:
                manifest[key] = value
        self._write_manifest(manifest)

    def _write_manifest(self, manifest: dict[str, Any]) -> None:
        _atomic_write(
            self.path(Files.MANIFEST), json.dumps(manifest, indent=2, default=str).encode()
        )

    # --- reading -----------------------------------------------------------------
    @classmethod
    def open(cls, artifacts: Path, version: str | None = None) -> Bundle:
        """The named version, or the one ``LATEST`` names."""
        if version is None:
            latest = artifacts / "LATEST"
            if not latest.is_file():
                raise BundleError(
                    f"{artifacts}: no bundle yet (run `python -m offline etl` first)",
                    reason="missing",
                )
            version = latest.read_text().strip()
        root = artifacts / version
        if not (root / Files.MANIFEST).is_file():
            raise BundleError(
                f"{root}: no bundle of version {version!r} (missing {Files.MANIFEST})",
                reason="missing",
            )
        return cls(root)

    @classmethod
    def published(cls, artifacts: Path) -> list[Bundle]:
        """The versions on disk that were once published, the latest published first."""
        found = []
        for root in Path(artifacts).glob("*/" + Files.MANIFEST):
            bundle = cls(root.parent)
            try:
                published = bundle.manifest().get("published")
            except BundleError:
                continue
            if isinstance(published, dict):
                found.append((float(published.get("at", 0)), bundle.version, bundle))
        return [bundle for *_, bundle in sorted(found, key=lambda f: f[:2], reverse=True)]

    def manifest(self) -> dict[str, Any]:
        try:
            manifest = json.loads(self.path(Files.MANIFEST).read_text())
        except (OSError, ValueError) as e:
            raise BundleError(f"{self.root}: unreadable manifest ({e})", reason="corrupt") from None
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
            raise BundleError(f"{self.root}: not a {FORMAT} bundle (foreign or corrupt manifest)")
        return manifest

    def verify(self, required: tuple[str, ...] = ()) -> dict[str, Any]:
        """Check every recorded file's sha256 and that ``required`` files are recorded.

        Raises:
            BundleError: naming the first file that is missing, unrecorded or changed.
        """
        manifest = self.manifest()
        files = manifest["files"]
        for name in required:
            if name not in files:
                raise BundleError(
                    f"{self.root}: bundle lacks {name} (partial bundle?)", reason="missing"
                )
        for name, entry in files.items():
            p = self.path(name)
            if not p.is_file():
                raise BundleError(f"{p}: listed in the manifest but missing", reason="missing")
            if p.stat().st_size != entry["bytes"] or _sha256(p) != entry["sha256"]:
                raise BundleError(
                    f"{p}: sha256 does not match the manifest (corrupt or tampered)",
                    reason="corrupt",
                )
        return manifest


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A hidden temporary path beside ``path`` to write to; renamed onto ``path`` on success.

    A reader (or a crash) never sees a half-written file: it sees the old file or the
    new one. The temporary name keeps the suffix, for writers that go by it.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.tmp-{secrets.token_hex(4)}{path.suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _atomic_write(path: Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
