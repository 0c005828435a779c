"""The known-datasets table: exact lookups only, complete entries, no alias clash."""

from __future__ import annotations

import re

import pytest

from maskgen.datasets import catalog
from maskgen.datasets.catalog import UNKNOWN, identify, lookup, normalize

REQUIRED = ["lfw", "fairface", "casia-webface", "ms1m", "ms1mv2", "ms1mv3", "glint360k",
            "webface260m", "webface42m", "webface12m", "webface4m", "umdfaces", "vggface2",
            "celeba", "megaface", "agedb", "cfp", "calfw", "cplfw", "rfw"]


def test_required_datasets_present():
    for name in REQUIRED:
        info = lookup(name)
        assert info is not None, name
        assert info.name == name


def test_every_entry_is_complete():
    for name in catalog.names():
        info = catalog.get(name)
        assert info.pretty_name
        assert info.url and info.url.startswith("http"), name
        assert info.citation and info.citation.lstrip().startswith("@"), name
        # every BibTeX entry is balanced and has a key, title and year
        for entry in re.split(r"\n(?=@)", info.citation.strip()):
            assert entry.count("{") == entry.count("}"), name
            assert re.match(r"@\w+\{[\w:\-]+,", entry), name
            assert "title" in entry and "year" in entry, name
        assert re.fullmatch(r"[a-z0-9.\-]+", info.license), name
        if info.license == "other":  # own terms: named and stated
            assert info.license_name and info.license_note, name
        if info.license == UNKNOWN:  # no clear licence: say so, and what to check
            assert info.license_note, name


def test_known_licences():
    assert lookup("fairface").license == "cc-by-4.0"
    assert lookup("lfw").license == "other"
    assert lookup("lfw").license_name == "lfw-research-benchmark"
    assert lookup("celeba").license == "other"
    assert lookup("glint360k").license == "other"


def test_aliases_and_normalisation():
    assert lookup("CASIA-WebFace").name == "casia-webface"
    assert lookup("casia_webface").name == "casia-webface"
    assert lookup("MS1M-ArcFace").name == "ms1mv2"
    assert lookup("faces_emore").name == "ms1mv2"
    assert lookup("ms1m-retinaface").name == "ms1mv3"
    assert lookup("lfw-deepfunneled").name == "lfw"
    assert lookup("  FairFace ").name == "fairface"
    assert lookup("WebFace-42M").name == "webface42m"
    assert normalize("A_b  c--d") == "a-b-c-d"


@pytest.mark.parametrize("name", ["casia-no-lfw", "casia", "my-lfw", "lfw2", "lfw-no-eval",
                                  "fairface-masked", "webface", "ms1", "", None, "folder"])
def test_no_substring_match(name):
    assert lookup(name) is None


def test_no_alias_names_two_datasets():
    seen: dict[str, str] = {}
    for name in catalog.names():
        info = catalog.get(name)
        for alias in (name, *info.aliases):
            key = normalize(alias)
            assert seen.setdefault(key, name) == name, alias


def test_identify_folders(tmp_path):
    assert identify(tmp_path / "lfw").name == "lfw"
    assert identify(tmp_path / "fairface-val" / "val").name == "fairface"
    assert identify(tmp_path / "casia") is None
    assert identify(tmp_path / "casia-no-lfw") is None
    # only a split folder looks at its parent, and only at its parent
    assert identify(tmp_path / "lfw" / "mine") is None
    assert identify(tmp_path / "lfw" / "mine" / "val") is None


def test_get_unknown_raises_and_unknown_info():
    with pytest.raises(KeyError):
        catalog.get("casia-no-lfw")
    info = catalog.unknown_info("casia-no-lfw")
    assert info.license == UNKNOWN and not info.known_license
    assert catalog.unknown_info("x", license_id="mit").license == "mit"
    d = lookup("fairface").to_dict()
    assert d["license"] == "cc-by-4.0" and d["citation"].startswith("@")
