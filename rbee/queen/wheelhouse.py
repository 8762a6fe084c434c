"""The wheelhouse: rbee and every dependency as wheels, so a machine without internet can install it.

Built here with ``pip wheel`` (rbee from its source tree when the queen runs from one, else
``rbee==VERSION`` from the index), its dependencies pinned to the versions installed here (the
combination this queen runs), and kept under ``--wheelhouse-dir`` keyed by rbee's version, the
Python version and the machine: the wheels of compiled packages (llama-cpp-python, pydantic-core,
numpy) fit only that Python and machine. pip's own cache is used as it is, so a llama-cpp-python
that was compiled once (minutes) is not compiled again; the wheelhouse itself is built once per key.
From a source tree, only the rbee wheel is rebuilt when the source changes.

Building needs the package index (or pip's cache) here, once; the machines it is copied to need
nothing but Python.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import importlib.metadata
import json
import platform
import re
import shutil
import sys
import tarfile
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import rbee
from rbee import __version__
from rbee.errors import ErrorCode, RbeeError

MANIFEST = "manifest.json"
Progress = Callable[[str], Awaitable[None]]
NOTE_EVERY_S = 10.0  # a line at least this often while pip works, so a waiting person sees it is alive
_PIP_NEWS = re.compile(r"^(Collecting|Building wheel for|Saved|Created wheel for|ERROR)")


@dataclass(frozen=True)
class Platform:
    """What compiled wheels are built for."""

    python: str  # major.minor, e.g. "3.11"
    machine: str  # platform.machine(), e.g. "x86_64"

    @classmethod
    def here(cls) -> Platform:
        return cls(f"{sys.version_info[0]}.{sys.version_info[1]}", platform.machine())

    def __str__(self) -> str:
        return f"Python {self.python} on {self.machine}"


@dataclass(frozen=True)
class Wheelhouse:
    dir: Path
    key: str
    digest: str  # changes whenever a wheel does: a machine holding this digest needs no copy
    wheels: tuple[str, ...]
    platform: Platform

    @property
    def tarball(self) -> Path:
        return self.dir.with_name(f"{self.key}.tar")


def source_tree() -> Path | None:
    """The folder rbee was installed from when it runs from a checkout (editable install), else None."""
    root = Path(rbee.__file__).resolve().parent.parent
    pyproject = root / "pyproject.toml"
    with contextlib.suppress(OSError):
        if re.search(r'^name\s*=\s*"rbee"', pyproject.read_text(), re.MULTILINE):
            return root
    return None


def source_fingerprint(root: Path) -> str:
    """A digest of what goes into the rbee wheel: pyproject and the package's files."""
    digest = hashlib.sha256()
    files = [root / "pyproject.toml", *sorted(p for p in (root / "rbee").rglob("*")
                                              if p.is_file() and "__pycache__" not in p.parts)]
    for path in files:
        digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


@contextlib.contextmanager
def clean_copy(root: Path) -> Iterator[Path]:
    """What building the rbee wheel reads, copied to a fresh folder: an in-tree build keeps ``build/lib``
    between runs, and a file deleted from the tree would live on in every wheel built after."""
    with tempfile.TemporaryDirectory(prefix="rbee-src-") as tmp:
        copy = Path(tmp)
        for name in ("pyproject.toml", "README.md", "LICENSE", "setup.cfg", "MANIFEST.in"):
            if (root / name).is_file():
                shutil.copy2(root / name, copy / name)
        shutil.copytree(root / "rbee", copy / "rbee", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        yield copy


def constraints() -> str:
    """``name==version`` of every distribution installed here but rbee: the wheelhouse gets these versions."""
    pins = {}
    for dist in importlib.metadata.distributions():
        name = dist.metadata["Name"]
        if name and name.lower() != "rbee":
            pins[name.lower()] = f"{name}=={dist.version}"
    return "\n".join(sorted(pins.values())) + "\n"


class WheelhouseBuilder:
    def __init__(self, cache_dir: Path, python: str = sys.executable) -> None:
        self.cache_dir = cache_dir
        self.python = python
        self.platform = Platform.here()
        self._lock = asyncio.Lock()

    @property
    def key(self) -> str:
        p = self.platform
        return f"rbee-{__version__}-py{p.python.replace('.', '')}-{p.machine}"

    async def ensure(self, progress: Progress) -> Wheelhouse:
        """The wheelhouse for this version, built (or its rbee wheel refreshed) first when needed."""
        async with self._lock:
            source = source_tree()
            stamp = await asyncio.to_thread(source_fingerprint, source) if source else __version__
            folder = self.cache_dir / self.key
            manifest = _read_manifest(folder)
            if manifest is None:
                await progress(f"building the wheelhouse {self.key} with pip (once; a llama-cpp-python pip has "
                               "not built before compiles for several minutes)")
                await self._build_all(folder, source, progress)
            elif manifest.get("source") != stamp and source is not None:
                await progress("rbee's source changed since the wheelhouse was built: rebuilding its wheel")
                await self._rebuild_rbee(folder, source, progress)
            else:
                await progress(f"using the cached wheelhouse {folder}")
            if manifest is None or manifest.get("source") != stamp:
                manifest = {"key": self.key, "source": stamp, "python": self.platform.python,
                            "machine": self.platform.machine, "built_at": time.time(),
                            "wheels": sorted(p.name for p in folder.glob("*.whl"))}
                (folder / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
            wheels = tuple(manifest["wheels"])
            digest = hashlib.sha256(json.dumps([self.key, stamp, wheels]).encode()).hexdigest()[:16]
            house = Wheelhouse(folder, self.key, digest, wheels, self.platform)
            if not house.tarball.is_file():
                await asyncio.to_thread(_write_tarball, house)
            return house

    async def _build_all(self, folder: Path, source: Path | None, progress: Progress) -> None:
        building = folder.with_name(folder.name + ".building")
        shutil.rmtree(building, ignore_errors=True)
        building.mkdir(parents=True)
        pins = building / "constraints.txt"
        pins.write_text(constraints())
        with clean_copy(source) if source else contextlib.nullcontext() as copy:
            await self._pip(["wheel", "--wheel-dir", str(building), "--constraint", str(pins),
                             str(copy) if copy else f"rbee=={__version__}"], progress)
        pins.unlink()
        shutil.rmtree(folder, ignore_errors=True)
        building.rename(folder)

    async def _rebuild_rbee(self, folder: Path, source: Path, progress: Progress) -> None:
        fresh = folder.with_name(folder.name + ".rbee")
        shutil.rmtree(fresh, ignore_errors=True)
        with clean_copy(source) as copy:
            await self._pip(["wheel", "--no-deps", "--wheel-dir", str(fresh), str(copy)], progress)
        for old in folder.glob("rbee-*.whl"):
            old.unlink()
        for new in fresh.glob("rbee-*.whl"):
            new.rename(folder / new.name)
        shutil.rmtree(fresh, ignore_errors=True)
        with contextlib.suppress(FileNotFoundError):
            (folder.with_name(f"{folder.name}.tar")).unlink()

    async def _pip(self, args: list[str], progress: Progress) -> None:
        argv = [self.python, "-m", "pip", "--disable-pip-version-check", *args]
        proc = await asyncio.create_subprocess_exec(*argv, stdout=asyncio.subprocess.PIPE,
                                                    stderr=asyncio.subprocess.STDOUT,
                                                    stdin=asyncio.subprocess.DEVNULL)
        tail: list[str] = []
        started = last_note = time.monotonic()
        try:
            assert proc.stdout is not None
            while True:
                try:
                    raw = await asyncio.wait_for(proc.stdout.readline(), NOTE_EVERY_S)
                except TimeoutError:
                    raw = None
                now = time.monotonic()
                if raw == b"":
                    break
                line = raw.decode(errors="replace").strip() if raw else ""
                if line:
                    tail = [*tail[-19:], line]
                if _PIP_NEWS.match(line) or now - last_note >= NOTE_EVERY_S:
                    await progress(line if _PIP_NEWS.match(line) else f"pip is still working ({now - started:.0f} s)")
                    last_note = now
            code = await proc.wait()
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        if code != 0:
            last = next((ln for ln in reversed(tail) if ln.startswith("ERROR")), tail[-1] if tail else "no output")
            raise RbeeError(ErrorCode.INSTALL_FAILED,
                            f"Building the wheelhouse failed here (pip exit {code}): {last}. Building it needs "
                            "the package index (or pip's cache) on the queen's machine once; check pip works "
                            "here, then run the install again.", {"pip_output": tail})


def _read_manifest(folder: Path) -> dict | None:
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    wheels = manifest.get("wheels") or []
    if not wheels or not all((folder / w).is_file() for w in wheels):
        return None  # half deleted: build again
    return manifest


def _write_tarball(house: Wheelhouse) -> None:
    """One uncompressed tar of the wheels (they are zips already), written beside the folder and renamed."""
    tmp = house.tarball.with_suffix(".tar.tmp")
    with tarfile.open(tmp, "w") as tar:
        for name in house.wheels:
            tar.add(house.dir / name, arcname=name)
    tmp.replace(house.tarball)
