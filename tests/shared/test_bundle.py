import json

import pytest

from shared.bundle import Bundle, Files
from shared.errors import BundleError


@pytest.fixture
def bundle(tmp_path) -> Bundle:
    b = Bundle.create(tmp_path, "synthetic", {"seed": 1})
    b.path("weights.bin").write_bytes(b"\x00" * 100)
    b.add("weights.bin")
    b.write_json(Files.SPEC, {"name": "synthetic"})
    return b.finish()


def test_finished_bundle_verifies_and_is_latest(bundle: Bundle, tmp_path) -> None:
    assert Bundle.open(tmp_path).root == bundle.root
    manifest = bundle.verify(required=("weights.bin", Files.SPEC))
    assert manifest["version"] == bundle.version and not list(tmp_path.glob(".staging-*"))


def test_tampered_file_is_refused(bundle: Bundle) -> None:
    data = bytearray(bundle.path("weights.bin").read_bytes())
    data[10] = 1
    bundle.path("weights.bin").write_bytes(bytes(data))
    with pytest.raises(BundleError, match="weights.bin: sha256 does not match"):
        bundle.verify()


def test_missing_and_partial_bundles_are_refused(bundle: Bundle) -> None:
    with pytest.raises(BundleError, match="lacks ranker_dcn.json"):
        bundle.verify(required=("ranker_dcn.json",))
    bundle.path(Files.SPEC).unlink()
    with pytest.raises(BundleError, match="missing"):
        bundle.verify()


def test_foreign_manifest_is_refused(bundle: Bundle) -> None:
    bundle.path(Files.MANIFEST).write_text(json.dumps({"format": "someone-else/3", "files": {}}))
    with pytest.raises(BundleError, match="foreign or corrupt"):
        bundle.verify()


def test_unknown_version_is_a_clear_error(tmp_path) -> None:
    with pytest.raises(BundleError, match="no bundle yet"):
        Bundle.open(tmp_path)
    with pytest.raises(BundleError, match="no bundle of version 'nope'"):
        Bundle.open(tmp_path, "nope")
