"""Omniglot loading on the small official subsets: splits, rotations, cache, safe and clear errors, download."""

from __future__ import annotations

import hashlib
import io
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest

from metarl.data import omniglot as og
from metarl.data.omniglot import (
    Character,
    Omniglot,
    OmniglotError,
    download_omniglot,
    find_sources,
    load_omniglot,
    omniglot_characters,
    random_split,
    vinyals_split,
)

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "omniglot"
SMALL1 = "images_background_small1"
SMALL2 = "images_background_small2"
pytestmark = pytest.mark.skipif(not (DATA / f"{SMALL1}.zip").exists(),
                                reason=f"Omniglot test data not found at {DATA} (CI puts it in ../shared/data)")


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.getbasetemp() / "omniglot-cache"  # shared by the test modules of a session


@pytest.fixture(scope="module")
def small(cache: Path) -> Omniglot:
    return load_omniglot(DATA, (SMALL1, SMALL2), cache_dir=cache)


def _chars(pairs: list[tuple[int, str]]) -> list[Character]:
    return [Character(n, a, f"character{i:02d}") for i, (n, a) in enumerate(pairs, start=1)]


# ---------------------------------------------------------------------------------------------- splits


@pytest.mark.skipif(not (DATA / "images_evaluation.zip").exists(), reason="full Omniglot zips not found")
def test_vinyals_split_of_the_full_data_has_the_published_sizes() -> None:
    chars = omniglot_characters(DATA)  # listing only, no decoding
    assert len(chars) == 1623
    split = vinyals_split(chars)
    assert {k: len(v) for k, v in split.items()} == {"train": 1028, "val": 172, "test": 423}
    by_key = {c.key: c for c in chars}
    test = {chars[i].key for i in split["test"]}
    assert "Gurmukhi/character42" in test and "Gurmukhi/character41" not in test  # the cut at character 1200
    assert {k.split("/")[0] for k in test} == {"Gurmukhi", "Kannada", "Keble", "Malayalam", "Manipuri", "Mongolian",
                                               "Old_Church_Slavonic_(Cyrillic)", "Oriya", "Sylheti", "Syriac_(Serto)",
                                               "Tengwar", "Tibetan", "ULOG"}
    assert {chars[i].alphabet for i in split["val"]} == og.VINYALS_VAL_ALPHABETS
    assert by_key["Angelic/character01"].number == 965 and by_key["Angelic/character01"] in \
        [chars[i] for i in split["train"]]


def test_vinyals_rule_by_hand() -> None:
    chars = _chars([(1, "Latin"), (30, "Hebrew"), (1200, "Gurmukhi"), (1201, "Gurmukhi"), (1623, "ULOG")])
    split = vinyals_split(chars)
    assert split["train"].tolist() == [0, 2] and split["val"].tolist() == [1] and split["test"].tolist() == [3, 4]


def test_splits_never_overlap_and_rotations_share_their_character(small: Omniglot) -> None:
    for rule, seed in (("vinyals", 0), ("random", 0), ("random", 1)):
        split = small.split(rule, seed)
        ids = [set(v.tolist()) for v in split.values()]
        assert sum(len(s) for s in ids) == small.num_classes == 4 * 242
        assert not (ids[0] & ids[1] or ids[0] & ids[2] or ids[1] & ids[2])
        for classes in split.values():
            chars = set((classes // 4).tolist())
            assert len(classes) == 4 * len(chars)  # all four rotations of a character, in the same split


def test_random_split_is_seeded_and_proportional(small: Omniglot) -> None:
    a, b = random_split(small.characters, 3), random_split(small.characters, 3)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.array_equal(a["test"], random_split(small.characters, 4)["test"])
    assert len(a["test"]) == round(242 * 423 / 1623) and len(a["val"]) == round(242 * 172 / 1623)
    shuffled = list(small.characters)[::-1]  # listing order does not matter
    c = random_split(shuffled, 3)
    assert sorted(shuffled[i].number for i in c["test"]) == sorted(small.characters[i].number for i in a["test"])


# ---------------------------------------------------------------------------------------------- decoding


def test_small_subsets_decode_deduplicated_with_bright_strokes(small: Omniglot) -> None:
    assert len(small.characters) == 242  # Greek and Latin are in both subsets: kept once
    assert small.images.shape == (242, 20, 28, 28) and small.images.dtype == np.uint8
    x = small.load(np.array([0, 5]), np.array([[0, 1, 2], [3, 4, 5]]))
    assert x.shape == (2, 3, 1, 28, 28) and float(x.min()) >= 0.0 and float(x.max()) == 1.0
    assert 0.02 < float(x.mean()) < 0.4  # mostly background (0) with bright strokes
    numbers = [c.number for c in small.characters]
    assert numbers == sorted(numbers) and len(set(numbers)) == 242


def test_rotation_classes_are_the_rotated_character(small: Omniglot) -> None:
    c = 17
    base = small.load(np.array([4 * c]), np.array([[0, 7]]))[0, :, 0].numpy()
    for r in range(1, 4):
        rotated = small.load(np.array([4 * c + r]), np.array([[0, 7]]))[0, :, 0].numpy()
        assert np.array_equal(rotated, np.rot90(base, k=r, axes=(-2, -1)))
    assert small.class_name(4 * c + 1).endswith("/rot090")


def test_cache_hit_does_not_decode_and_extracted_folder_equals_zip(small: Omniglot, cache: Path, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(data: bytes) -> np.ndarray:
        raise AssertionError("a PNG was decoded although the cache holds the source")

    monkeypatch.setattr(og, "decode_png", fail)
    again = load_omniglot(DATA, (SMALL1, SMALL2), cache_dir=cache)
    assert np.array_equal(again.images, small.images) and again.characters == small.characters
    monkeypatch.undo()
    with zipfile.ZipFile(DATA / f"{SMALL1}.zip") as zf:
        zf.extractall(tmp_path)  # the official file: safe to extract
    folder = load_omniglot(tmp_path, (SMALL1,), cache_dir=None)
    zipped = load_omniglot(DATA, (SMALL1,), cache_dir=cache)
    assert folder.characters == zipped.characters and np.array_equal(folder.images, zipped.images)
    assert find_sources(tmp_path, (SMALL1,))[0].path.is_dir()


def test_a_changed_file_gets_a_new_cache_entry(cache: Path, tmp_path: Path) -> None:
    copy = tmp_path / f"{SMALL1}.zip"
    shutil.copy(DATA / f"{SMALL1}.zip", copy)
    key_a = og._cache_path(cache, find_sources(tmp_path, (SMALL1,))[0])
    with zipfile.ZipFile(copy, "a") as zf:
        zf.writestr("README.txt", "changed")
    key_b = og._cache_path(cache, find_sources(tmp_path, (SMALL1,))[0])
    assert key_a != key_b


# ---------------------------------------------------------------------------------------------- errors


def _png() -> bytes:
    with zipfile.ZipFile(DATA / f"{SMALL1}.zip") as zf:
        return zf.read(next(n for n in zf.namelist() if n.endswith(".png")))


@pytest.mark.parametrize("entry", ["../../evil/character01/0001_01.png", "/abs/Latin/character01/0001_01.png",
                                   "top/../../Latin/character01/0001_01.png"])
def test_unsafe_zip_entries_are_refused(entry: str, tmp_path: Path) -> None:
    with zipfile.ZipFile(tmp_path / f"{SMALL1}.zip", "w") as zf:
        zf.writestr(entry, _png())
    with pytest.raises(OmniglotError, match="absolute path or climbs out"):
        load_omniglot(tmp_path, (SMALL1,), cache_dir=None)


def test_truncated_and_corrupt_archives_name_the_file(tmp_path: Path) -> None:
    raw = (DATA / f"{SMALL1}.zip").read_bytes()
    (tmp_path / f"{SMALL1}.zip").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(OmniglotError, match=f"{SMALL1}.zip.*truncated or corrupt"):
        load_omniglot(tmp_path, (SMALL1,), cache_dir=None)
    # Damage one member's compressed bytes: the listing works, reading that member fails (bad CRC / zlib).
    with zipfile.ZipFile(io.BytesIO(raw)) as zf:
        info = next(i for i in zf.infolist() if i.filename.endswith(".png"))
    start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra) + 8
    damaged = bytearray(raw)
    damaged[start:start + 16] = bytes(16)
    (tmp_path / f"{SMALL1}.zip").write_bytes(bytes(damaged))
    with pytest.raises(OmniglotError, match=info.filename.split("/")[-1]):
        load_omniglot(tmp_path, (SMALL1,), cache_dir=None)


def test_missing_files_say_what_is_expected(tmp_path: Path) -> None:
    with pytest.raises(OmniglotError, match="images_background.zip, images_evaluation.zip.*brendenlake/omniglot"):
        load_omniglot(tmp_path)


def test_an_incomplete_character_is_reported(tmp_path: Path) -> None:
    with zipfile.ZipFile(tmp_path / f"{SMALL1}.zip", "w") as zf:
        for d in range(1, 20):
            zf.writestr(f"{SMALL1}/Latin/character01/0001_{d:02d}.png", _png())
    with pytest.raises(OmniglotError, match="Latin/character01 has 19 drawings, expected 20"):
        load_omniglot(tmp_path, (SMALL1,), cache_dir=None)


# ---------------------------------------------------------------------------------------------- download


def test_download_checks_the_md5_and_leaves_no_partial_file(tmp_path: Path) -> None:
    source = DATA / f"{SMALL1}.zip"
    md5 = hashlib.md5(source.read_bytes()).hexdigest()
    url = source.parent.resolve().as_uri() + "/"
    out = tmp_path / "data"
    [path] = download_omniglot(out, (SMALL1,), base_url=url, md5={SMALL1: md5})
    assert path.read_bytes() == source.read_bytes()
    assert load_omniglot(out, (SMALL1,), cache_dir=None).images.shape[0] == 136
    download_omniglot(out, (SMALL1,), base_url="file:///nonexistent/", md5={SMALL1: md5})  # present: not fetched
    with pytest.raises(OmniglotError, match="MD5"):
        download_omniglot(tmp_path / "bad", (SMALL1,), base_url=url, md5={SMALL1: "0" * 32})
    assert list((tmp_path / "bad").iterdir()) == []
    with pytest.raises(OmniglotError, match="cannot download"):
        download_omniglot(tmp_path / "none", (SMALL1,), base_url="file:///nonexistent/", md5={SMALL1: md5})


def test_official_download_targets() -> None:
    assert og.BASE_URL.startswith("https://raw.githubusercontent.com/brendenlake/omniglot/")
    assert og.OFFICIAL_MD5 == {"images_background": "68d2efa1b9178cc56df9314c21c6e718",
                               "images_evaluation": "6b91aef0f799c5bb55b94e3f2daec811"}
