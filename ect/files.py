"""Files: atomic writes, JSON records, the cache directory and verified downloads, in one place.

Every result file is written to a temporary file next to its destination and renamed into place, so a crash
never leaves a half-written file under a result's name. Downloads are verified: against a published sha256
where one is known, else by trust on first use (the hash of the first download is kept in ``<file>.sha256``
and every later use is checked against it).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from ect.errors import UserError


class DownloadError(UserError):
    """A file could not be downloaded, or what is on disk is not the file that was expected."""


def cache_dir(path: str | Path | None = None) -> Path:
    """The cache for reference statistics, feature weights and downloads: ``path``, else ``$ECT_CACHE``, else
    ``~/.cache/ect``."""
    if path is not None:
        return Path(path).expanduser()
    env = os.environ.get("ECT_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "ect"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | Path, writer: Callable[[IO[bytes]], Any],
                       before_replace: Callable[[], None] | None = None) -> None:
    """Call ``writer(fileobj)`` on a temporary file next to ``path`` and rename it into place.

    The file gets the mode a plain ``open`` would give it (0666 less the umask), not mkstemp's 0600, so results
    on a shared file system stay readable by the group. ``before_replace`` runs after the data is on disk and
    just before the rename (checkpoint rotation).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            proxy = _WriteErrors(f)
            try:
                writer(proxy)
            except Exception as exc:  # torch.save turns a failed write (disk full) into an opaque RuntimeError
                if proxy.error is None or exc is proxy.error:
                    raise
                raise proxy.error from exc
            f.flush()
            os.fchmod(f.fileno(), 0o666 & ~_umask())
            os.fsync(f.fileno())
        if before_replace is not None:
            before_replace()
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError) and exc.filename is None:  # name the file, not the temporary one
            raise OSError(exc.errno, exc.strerror, str(path)) from exc
        raise


class _WriteErrors:
    """A file object that remembers the OSError of a failed write, for writers that replace it with their own."""

    def __init__(self, f: IO[bytes]) -> None:
        self._f, self.error = f, None

    def write(self, data: bytes) -> int:
        try:
            return self._f.write(data)
        except OSError as exc:
            self.error = exc
            raise

    def __getattr__(self, name: str) -> Any:
        return getattr(self._f, name)


def write_text(path: str | Path, text: str) -> None:
    """Write ``text`` (UTF-8) atomically."""
    atomic_write_bytes(path, lambda f: f.write(text.encode()))


def write_json(path: str | Path, record: Any) -> None:
    """Write a JSON record (indented, newline-terminated) atomically."""
    write_text(path, json.dumps(record, indent=2) + "\n")


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def cache_path_for(url: str, cache: str | Path | None = None) -> Path:
    """Where a download of ``url`` is cached: ``<cache>/downloads/<host>/<url path>`` (readable, collision-free)."""
    parts = urllib.parse.urlsplit(url)
    segments = [s for s in parts.path.split("/") if s not in ("", ".", "..")]
    if not segments:
        raise DownloadError(f"URL has no file name: {url}")
    return cache_dir(cache).joinpath("downloads", parts.netloc or "local", *segments)


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def _download(url: str, dest: Path, timeout: float) -> str:
    """Stream ``url`` into ``dest`` atomically; returns the sha256 of what was written."""
    digest = hashlib.sha256()

    def writer(f: IO[bytes]) -> None:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            while block := resp.read(1 << 20):
                digest.update(block)
                f.write(block)

    print(f"Downloading {url} -> {dest}", file=sys.stderr)
    try:
        atomic_write_bytes(dest, writer)
    except (urllib.error.URLError, OSError, TimeoutError, ValueError) as exc:
        raise DownloadError(
            f"cannot download {url} ({getattr(exc, 'reason', exc)}). Expected local copy at {dest}: download the file "
            f"there by hand (e.g. `curl -L -o {dest} {url}`) or pass a local path as the source."
        ) from exc
    return digest.hexdigest()


def fetch_verified(url: str, dest: str | Path, sha256: str | None = None, timeout: float = 60.0) -> str:
    """``dest`` holding the file at ``url``, downloaded if missing; returns its sha256.

    ``sha256`` given: the file must match it. ``None``: trust on first use — the first download's (or a file
    placed there by hand) hash goes to ``<dest>.sha256``, and a file that no longer matches it is an error.
    """
    dest = Path(dest)
    sidecar = _sidecar(dest)
    if dest.is_file():
        sha = sha256_file(dest)
        recorded = (sidecar.read_text().split() or [""])[0] if sidecar.is_file() else None
        if recorded is not None and recorded != sha:
            raise DownloadError(
                f"cached file {dest} has sha256 {sha}, but {sidecar} recorded {recorded} when it was first "
                f"downloaded from {url}; the file changed. Delete both files to download it again."
            )
    else:
        sha = _download(url, dest, timeout)
    if sha256 is not None and sha != sha256:
        raise DownloadError(f"{dest}: sha256 {sha} does not match the published {sha256} for {url}")
    if not sidecar.is_file():  # trust starts now
        write_text(sidecar, f"{sha}  {dest.name}\n")
    return sha
