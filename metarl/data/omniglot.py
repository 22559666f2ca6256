"""Omniglot (Lake, Salakhutdinov & Tenenbaum 2015) for few-shot classification.

Files. The official ``images_background.zip`` (964 characters of 30 alphabets) and
``images_evaluation.zip`` (659 characters of 20 alphabets) from github.com/brendenlake/omniglot
(``python/``), or the folders they extract to, in a folder you give (it may be read-only);
:func:`download_omniglot` fetches them (official URLs, MD5 checked, written atomically). Inside, the
layout is ``<top>/<Alphabet>/<characterNN>/<NNNN>_<DD>.png``: 20 drawings (drawer ``DD``) per
character, 105x105 one-bit images, where ``NNNN`` is Omniglot's own character number (background
1-964, evaluation 965-1623). The two small background subsets (``images_background_small1/2``) have
the same layout; characters present in several sources (Greek and Latin in both subsets) are kept once.

Archives are read in memory, never extracted: an entry that is an absolute path or climbs out with
``..`` is refused, and a truncated or corrupt archive or image fails with an error naming the file.

Preprocessing. Each image is converted to 8-bit grey, resized to 28x28 with the Lanczos filter (as
MAML's ``proc_images.py``; Snell et al.'s loader resizes the one-bit image with PIL's default filter
instead), and inverted so that strokes are bright (ProtoNet's ``1 - x``). Stored as uint8, loaded as
``x / 255`` in ``[0, 1]``, shape ``[1, 28, 28]``.

Classes. Each character rotated by 0, 90, 180 and 270 degrees (counter-clockwise) is its own class
(Santoro et al. 2016, Vinyals et al. 2016): class id ``4 * c + r`` for character ``c``, rotation ``r``.
The rotations of a character always share its split.

Vinyals split (Vinyals et al. 2016, as the ``splits/vinyals`` class lists of Snell et al.'s
prototypical-networks code, the "1028 / 172 / 423" of the MAML-era papers):

- ``test``: the 423 characters numbered 1201-1623. Vinyals et al. train on the first 1200 characters
  and test on "the remaining 423": Gurmukhi character42-45 and the 12 evaluation alphabets after
  Gurmukhi (Kannada, Keble, Malayalam, Manipuri, Mongolian, Old_Church_Slavonic_(Cyrillic), Oriya,
  Sylheti, Syriac_(Serto), Tengwar, Tibetan, ULOG).
- ``val``: every character of the background alphabets Armenian, Bengali, Early_Aramaic, Hebrew and
  Mkhedruli_(Georgian): 172 characters (Snell et al.'s ``val.txt``).
- ``train``: the other 1028 characters (the other 25 background alphabets, and evaluation characters
  965-1200: Angelic ... Gurmukhi character41).

:func:`random_split` draws a seeded random split of the characters instead (by default in the same
proportions). Splits never overlap (tested).

Cache. Decoding the 32,460 PNGs takes about 12 s, so each source's decoded arrays are cached as
``omniglot-<source>-<key>.npz`` in a folder you choose (default ``$METARL_CACHE``, else
``$XDG_CACHE_HOME/metarl``, else ``~/.cache/metarl``), keyed by the SHA-256 of the source's bytes (the
zip, or every file of the folder) and the preprocessing version: a changed file is decoded again, and
an epoch never decodes a PNG.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import secrets
import urllib.request
import warnings
import zipfile
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
import torch

BASE_URL = "https://raw.githubusercontent.com/brendenlake/omniglot/master/python/"
OFFICIAL_MD5 = {"images_background": "68d2efa1b9178cc56df9314c21c6e718",
                "images_evaluation": "6b91aef0f799c5bb55b94e3f2daec811"}
STANDARD_SOURCES: tuple[str, ...] = ("images_background", "images_evaluation")
SMALL_SOURCES: tuple[str, ...] = ("images_background_small1", "images_background_small2")
IMAGE_SIZE = 28
DRAWINGS = 20
ROTATIONS = 4
PREPROCESSING = "grey-lanczos28-inverted-v1"  # part of the cache key: change it when decoding changes

VINYALS_FIRST_TEST_NUMBER = 1201
VINYALS_VAL_ALPHABETS = frozenset({"Armenian", "Bengali", "Early_Aramaic", "Hebrew", "Mkhedruli_(Georgian)"})
VINYALS_SIZES = {"train": 1028, "val": 172, "test": 423}
SPLITS: tuple[str, ...] = ("train", "val", "test")

_FILE_NAME = re.compile(r"^(\d{4})_(\d{2})\.png$")
_LAYOUT = "<top>/<Alphabet>/<characterNN>/<NNNN>_<DD>.png"


class OmniglotError(ValueError):
    """A data folder or file that cannot be used; the message names it and says what to do."""


@dataclass(frozen=True, order=True)
class Character:
    """One Omniglot character: ``alphabet/name`` with Omniglot's own ``number`` (1..1623)."""

    number: int
    alphabet: str
    name: str

    @property
    def key(self) -> str:
        return f"{self.alphabet}/{self.name}"


# ------------------------------------------------------------------------------------------------------
# sources: a zip or an extracted folder, listed without decoding


@dataclass(frozen=True)
class _Source:
    name: str
    path: Path

    @property
    def is_zip(self) -> bool:
        return self.path.suffix == ".zip"


def _how_to_get(root: Path, names: Sequence[str]) -> str:
    files = ", ".join(f"{n}.zip" for n in names)
    return (f"expected {files} (or the folders they extract to) in {root}; download them from "
            f"https://github.com/brendenlake/omniglot/tree/master/python, or pass --download (metarl fewshot) / "
            f"call metarl.data.omniglot.download_omniglot({str(root)!r})")


def find_sources(root: str | Path, names: Sequence[str] = STANDARD_SOURCES) -> list[_Source]:
    """The zip (preferred) or extracted folder of each named source in ``root``; error if one is missing."""
    root = Path(root)
    if not root.is_dir():
        raise OmniglotError(f"Omniglot data folder {root} does not exist; {_how_to_get(root, names)}")
    found, missing = [], []
    for name in names:
        zip_path, folder = root / f"{name}.zip", root / name
        if zip_path.is_file():
            found.append(_Source(name, zip_path))
        elif folder.is_dir():
            found.append(_Source(name, folder))
        else:
            missing.append(name)
    if missing:
        raise OmniglotError(f"no {', '.join(missing)} in {root}: {_how_to_get(root, missing)}")
    return found


def _safe_parts(archive: Path, name: str) -> tuple[str, ...]:
    """The path components of a zip entry; an absolute path or a ``..`` component is refused."""
    path = PurePosixPath(name.replace("\\", "/"))
    if path.is_absolute() or name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name) or ".." in path.parts:
        raise OmniglotError(f"{archive}: entry {name!r} is an absolute path or climbs out with '..'; refusing to "
                            "read this archive (the official Omniglot zips have no such entry)")
    return path.parts


def _open_zip(path: Path) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(path)
    except (zipfile.BadZipFile, EOFError, OSError) as e:
        raise OmniglotError(f"cannot read {path}: {e} (the archive is truncated or corrupt); delete it and "
                            "download it again") from e


def _png_entries(source: _Source) -> Iterator[tuple[tuple[str, str, str], str]]:
    """``((alphabet, character, file name), entry)`` for every PNG; ``entry`` is what :func:`_read` takes."""
    if source.is_zip:
        with _open_zip(source.path) as zf:
            names = [info.filename for info in zf.infolist() if not info.is_dir()]
        for name in names:
            parts = _safe_parts(source.path, name)
            if parts[0] == "__MACOSX" or parts[-1].startswith(".") or not parts[-1].endswith(".png"):
                continue
            if len(parts) < 3:
                raise OmniglotError(f"{source.path}: entry {name!r} does not follow Omniglot's layout {_LAYOUT}")
            yield (parts[-3], parts[-2], parts[-1]), name
    else:
        for path in sorted(source.path.rglob("*.png")):
            parts = path.relative_to(source.path).parts
            if len(parts) != 3 or parts[-1].startswith("."):
                raise OmniglotError(f"{path} does not follow Omniglot's layout {source.path}/<Alphabet>/"
                                    "<characterNN>/<NNNN>_<DD>.png")
            yield (parts[0], parts[1], parts[2]), str(path)


def list_characters(source: _Source) -> dict[Character, list[str]]:
    """Every character of a source with its drawings' entries (sorted by drawer), without decoding."""
    by_folder: dict[tuple[str, str], list[tuple[int, int, str]]] = {}
    for (alphabet, character, file_name), entry in _png_entries(source):
        m = _FILE_NAME.match(file_name)
        if m is None:
            raise OmniglotError(f"{source.path}: {entry!r} is not named <NNNN>_<DD>.png as in Omniglot's layout "
                                f"{_LAYOUT}")
        by_folder.setdefault((alphabet, character), []).append((int(m.group(1)), int(m.group(2)), entry))
    if not by_folder:
        raise OmniglotError(f"{source.path} holds no PNG drawings in Omniglot's layout {_LAYOUT}")
    out: dict[Character, list[str]] = {}
    for (alphabet, character), files in sorted(by_folder.items()):
        numbers = {n for n, _, _ in files}
        if len(numbers) != 1:
            raise OmniglotError(f"{source.path}: {alphabet}/{character} mixes character numbers {sorted(numbers)}")
        if len(files) != DRAWINGS:
            raise OmniglotError(f"{source.path}: {alphabet}/{character} has {len(files)} drawings, expected "
                                f"{DRAWINGS} (the official files have 20 per character); the copy is incomplete")
        out[Character(numbers.pop(), alphabet, character)] = [e for _, _, e in sorted(files)]
    return out


# ------------------------------------------------------------------------------------------------------
# decoding and the cache


def decode_png(data: bytes) -> np.ndarray:
    """One Omniglot PNG -> ``[28, 28]`` uint8, strokes 255 (see the module docstring)."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        grey = im.convert("L").resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.LANCZOS)
        return 255 - np.asarray(grey, dtype=np.uint8)


def _decode_source(source: _Source, listing: Mapping[Character, list[str]]) -> np.ndarray:
    images = np.empty((len(listing), DRAWINGS, IMAGE_SIZE, IMAGE_SIZE), dtype=np.uint8)
    zf = _open_zip(source.path) if source.is_zip else None
    try:
        for c, entries in enumerate(listing.values()):
            for d, entry in enumerate(entries):
                where = f"{source.path}: {entry}" if zf is not None else entry
                try:
                    data = zf.read(entry) if zf is not None else Path(entry).read_bytes()
                except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as e:
                    raise OmniglotError(f"cannot read {where}: {e} (truncated or corrupt); delete the file and "
                                        "download it again") from e
                try:
                    images[c, d] = decode_png(data)
                except (OSError, ValueError) as e:  # PIL.UnidentifiedImageError is an OSError
                    raise OmniglotError(f"cannot decode {where} as a PNG image: {e}") from e
    finally:
        if zf is not None:
            zf.close()
    return images


def default_cache_dir() -> Path:
    if os.environ.get("METARL_CACHE"):
        return Path(os.environ["METARL_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "metarl"


def source_checksum(source: _Source) -> str:
    """SHA-256 of a zip's bytes, or of a folder's files (relative paths and contents, sorted)."""
    h = hashlib.sha256()
    if source.is_zip:
        with open(source.path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    else:
        for path in sorted(source.path.rglob("*")):
            if path.is_file():
                h.update(str(path.relative_to(source.path)).encode() + b"\0")
                h.update(path.read_bytes())
    return h.hexdigest()


def _cache_path(cache_dir: Path, source: _Source) -> Path:
    key = hashlib.sha256(f"{source_checksum(source)}:{PREPROCESSING}".encode()).hexdigest()[:20]
    return cache_dir / f"omniglot-{source.name}-{key}.npz"


def _read_cache(path: Path) -> tuple[list[Character], np.ndarray] | None:
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            images, numbers, names = z["images"], z["numbers"], z["names"]
        chars = [Character(int(n), *str(k).split("/", 1)) for n, k in zip(numbers, names, strict=True)]
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
        warnings.warn(f"ignoring the unreadable Omniglot cache {path} ({e}); decoding the source again", stacklevel=3)
        return None
    if images.shape != (len(chars), DRAWINGS, IMAGE_SIZE, IMAGE_SIZE) or images.dtype != np.uint8:
        warnings.warn(f"ignoring the Omniglot cache {path}: unexpected array {images.shape} {images.dtype}",
                      stacklevel=3)
        return None
    return chars, images


def _write_cache(path: Path, chars: Sequence[Character], images: np.ndarray) -> None:
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp.npz")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(tmp, images=images, numbers=np.array([c.number for c in chars], dtype=np.int64),
                 names=np.array([c.key for c in chars]))
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        warnings.warn(f"could not write the Omniglot cache {path} ({e}); every load will decode the PNGs again "
                      "(about 12 s for the full set). Pass a writable cache folder (--cache-dir).", stacklevel=3)


def _load_source(source: _Source, cache_dir: Path | None) -> tuple[list[Character], np.ndarray]:
    cache = _cache_path(cache_dir, source) if cache_dir is not None else None
    if cache is not None:
        hit = _read_cache(cache)
        if hit is not None:
            return hit
    listing = list_characters(source)
    images = _decode_source(source, listing)
    chars = list(listing)
    if cache is not None:
        _write_cache(cache, chars, images)
    return chars, images


# ------------------------------------------------------------------------------------------------------
# the data set


@dataclass(frozen=True, eq=False)
class Omniglot:
    """Decoded Omniglot characters as a class-indexed data set (``rotations`` classes per character).

    ``images``: ``[n_characters, 20, 28, 28]`` uint8, strokes 255; class ``4 * c + r`` is character ``c``
    rotated by ``r * 90`` degrees counter-clockwise.
    """

    characters: tuple[Character, ...]
    images: np.ndarray
    rotations: int = ROTATIONS

    @property
    def num_classes(self) -> int:
        return len(self.characters) * self.rotations

    @property
    def item_shape(self) -> tuple[int, int, int]:
        return (1, IMAGE_SIZE, IMAGE_SIZE)

    def class_sizes(self) -> np.ndarray:
        """``[num_classes]`` images per class (20 for every Omniglot class)."""
        return np.full(self.num_classes, self.images.shape[1], dtype=np.int64)

    def class_name(self, class_id: int) -> str:
        c, r = divmod(int(class_id), self.rotations)
        return f"{self.characters[c].key}/rot{90 * r:03d}"

    def classes_of(self, character_indices: Sequence[int] | np.ndarray) -> np.ndarray:
        """All rotation classes of the given characters, ``[len * rotations]``."""
        idx = np.asarray(character_indices, dtype=np.int64)
        return (idx[:, None] * self.rotations + np.arange(self.rotations)).ravel()

    def load(self, classes: np.ndarray, items: np.ndarray, device: torch.device | str = "cpu") -> torch.Tensor:
        """Images ``[N, M, 1, 28, 28]`` float32 in ``[0, 1]`` of ``items [N, M]`` of ``classes [N]``."""
        chars, rots = np.divmod(np.asarray(classes, dtype=np.int64), self.rotations)
        x = self.images[chars[:, None], np.asarray(items, dtype=np.int64)]  # [N, M, 28, 28] (a copy)
        for r in range(1, self.rotations):
            sel = rots == r
            if sel.any():
                x[sel] = np.rot90(x[sel], k=r, axes=(-2, -1))
        return torch.from_numpy(x).to(device=device, dtype=torch.float32).div_(255.0).unsqueeze(2)

    def split(self, rule: str = "vinyals", seed: int = 0) -> dict[str, np.ndarray]:
        """Class ids of each split: ``vinyals`` (the module docstring) or a seeded ``random`` character split."""
        if rule == "vinyals":
            by_char = vinyals_split(self.characters)
        elif rule == "random":
            by_char = random_split(self.characters, seed)
        else:
            raise ValueError(f"split rule must be 'vinyals' or 'random', got {rule!r}")
        return {k: self.classes_of(v) for k, v in by_char.items()}


def vinyals_split(characters: Sequence[Character]) -> dict[str, np.ndarray]:
    """Indices into ``characters`` of the Vinyals train / val / test characters (module docstring)."""
    out: dict[str, list[int]] = {s: [] for s in SPLITS}
    for i, c in enumerate(characters):
        if c.number >= VINYALS_FIRST_TEST_NUMBER:
            out["test"].append(i)
        elif c.alphabet in VINYALS_VAL_ALPHABETS:
            out["val"].append(i)
        else:
            out["train"].append(i)
    return {k: np.asarray(v, dtype=np.int64) for k, v in out.items()}


def random_split(characters: Sequence[Character], seed: int,
                 sizes: Mapping[str, float] = VINYALS_SIZES) -> dict[str, np.ndarray]:
    """A seeded random character split in the proportions of ``sizes`` (default 1028 : 172 : 423).

    The characters are ordered by number first, so the split depends on the seed and the set of
    characters only, not on the order the files were listed in.
    """
    total = float(sum(sizes.values()))
    n = len(characters)
    order = np.argsort([c.number for c in characters], kind="stable")
    perm = order[np.random.default_rng([seed, 1623]).permutation(n)]
    n_test = int(round(n * sizes["test"] / total))
    n_val = int(round(n * sizes["val"] / total))
    return {"test": np.sort(perm[:n_test]), "val": np.sort(perm[n_test:n_test + n_val]),
            "train": np.sort(perm[n_test + n_val:])}


def omniglot_characters(root: str | Path, sources: Sequence[str] = STANDARD_SOURCES) -> list[Character]:
    """The characters of the sources in ``root`` (listing only: no decoding), duplicates dropped."""
    seen: dict[int, Character] = {}
    for source in find_sources(root, sources):
        for c in list_characters(source):
            seen.setdefault(c.number, c)
    return sorted(seen.values())


def load_omniglot(root: str | Path, sources: Sequence[str] = STANDARD_SOURCES,
                  cache_dir: str | Path | None = "default") -> Omniglot:
    """Decode (or read from the cache) the given sources in ``root``; ``cache_dir=None`` disables caching.

    Characters present in several sources (the two small subsets share Greek and Latin) are kept once;
    the result is ordered by Omniglot's character number.
    """
    cache = default_cache_dir() if cache_dir == "default" else (Path(cache_dir) if cache_dir is not None else None)
    chars: list[Character] = []
    arrays: list[np.ndarray] = []
    seen: set[int] = set()
    for source in find_sources(root, sources):
        source_chars, images = _load_source(source, cache)
        keep = [i for i, c in enumerate(source_chars) if c.number not in seen]
        seen.update(source_chars[i].number for i in keep)
        chars.extend(source_chars[i] for i in keep)
        arrays.append(images[keep])
    order = np.argsort([c.number for c in chars], kind="stable")
    return Omniglot(tuple(chars[i] for i in order), np.concatenate(arrays)[order])


# ------------------------------------------------------------------------------------------------------
# download


def _urlopen_copy(url: str, out: io.BufferedWriter) -> None:
    with urllib.request.urlopen(url, timeout=60) as response:  # noqa: S310 - official https URL or a user's own
        for block in iter(lambda: response.read(1 << 20), b""):
            out.write(block)


def download_omniglot(root: str | Path, sources: Sequence[str] = STANDARD_SOURCES, base_url: str = BASE_URL,
                      md5: Mapping[str, str] = OFFICIAL_MD5,
                      fetch: Callable[[str, io.BufferedWriter], None] = _urlopen_copy) -> list[Path]:
    """Download the missing ``<source>.zip`` files into ``root`` and check their MD5s.

    A file already present is left as it is (it may be a copy you made). Each download goes to a
    temporary file in ``root`` and is renamed into place only after its MD5 matched, so an interrupted
    or corrupt download never leaves a half file behind.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    out = []
    for name in sources:
        target = root / f"{name}.zip"
        out.append(target)
        if target.exists() or (root / name).is_dir():
            continue
        if name not in md5:
            raise OmniglotError(f"no known MD5 for {name}.zip; downloadable sources: {sorted(md5)}")
        url = base_url + f"{name}.zip"
        tmp = root / f".{name}.zip.{secrets.token_hex(4)}.part"
        try:
            with open(tmp, "wb") as f:
                fetch(url, f)
            digest = hashlib.md5(tmp.read_bytes()).hexdigest()
            if digest != md5[name]:
                raise OmniglotError(f"the download of {url} has MD5 {digest}, expected {md5[name]}: it is corrupt or "
                                    "the file changed upstream; try again, or download it by hand into "
                                    f"{root}")
            os.replace(tmp, target)
        except OSError as e:
            raise OmniglotError(f"cannot download {url} into {root}: {e}") from e
        finally:
            tmp.unlink(missing_ok=True)
    return out


__all__ = ["BASE_URL", "Character", "DRAWINGS", "OFFICIAL_MD5", "Omniglot", "OmniglotError", "SMALL_SOURCES",
           "STANDARD_SOURCES", "VINYALS_SIZES", "decode_png", "default_cache_dir", "download_omniglot",
           "find_sources", "list_characters", "load_omniglot", "omniglot_characters", "random_split",
           "source_checksum", "vinyals_split"]
