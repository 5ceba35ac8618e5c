"""Fetch one data file from its public source, verified by SHA-256.

Only the standard library's ``urllib`` and ``tqdm`` are used. The file is streamed into a
temporary file beside its destination and moved into place with ``os.replace`` only once its
digest matches, so an interrupted or corrupt download never leaves a file under the final name.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import urllib.error
import urllib.request
import uuid
from pathlib import Path

from tqdm.auto import tqdm

CHUNK_BYTES = 1 << 20
USER_AGENT = "highmmt-data-download"


def download(url: str, dest: str | os.PathLike[str], sha256: str, *, quiet: bool = False, timeout: float = 30) -> Path:
    """Download ``url`` to ``dest`` and check its SHA-256; return ``dest``.

    Args:
        url: where to fetch the file.
        dest: the final path; its folder is created if needed.
        sha256: the expected hex digest.
        quiet: no progress bar.
        timeout: seconds to wait for the connection and for each read.

    Raises:
        PermissionError: ``dest``'s folder cannot be created or written (no request is made).
        ConnectionError: no connection, a timeout, an HTTP error status or a truncated transfer.
        ValueError: the downloaded bytes do not have the expected digest (nothing is kept).
    """
    dest = Path(dest)
    tmp = dest.parent / f".{dest.name}.{uuid.uuid4().hex[:8]}.part"
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        out = open(tmp, "wb")  # noqa: SIM115 - closed below; opened first so an unwritable folder costs no request
    except OSError as e:
        raise PermissionError(
            f"cannot download {url} to {str(dest)!r}: its folder is not writable ({e}); "
            f"pass --data-root (or set HIGHMMT_DATA) to a writable folder"
        ) from e
    digest = hashlib.sha256()
    try:
        with out:
            try:
                request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
                with urllib.request.urlopen(request, timeout=timeout) as response:
                    length = response.headers.get("Content-Length", "")
                    total = int(length) if length.isdigit() else None
                    received = 0
                    with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024,
                              desc=f"downloading {dest.name}", disable=quiet) as bar:
                        while chunk := response.read(CHUNK_BYTES):
                            out.write(chunk)
                            digest.update(chunk)
                            received += len(chunk)
                            bar.update(len(chunk))
                    if total is not None and received != total:
                        raise ConnectionError(f"transfer cut short: got {received} of {total} bytes")
            except urllib.error.HTTPError as e:
                raise ConnectionError(f"could not download {url}: HTTP {e.code} {e.reason}") from e
            except urllib.error.URLError as e:
                raise ConnectionError(f"could not download {url}: {e.reason}") from e
            except (http.client.HTTPException, TimeoutError, ConnectionError) as e:
                raise ConnectionError(f"could not download {url}: {str(e) or type(e).__name__}") from e
        actual = digest.hexdigest()
        if actual != sha256.lower():
            raise ValueError(
                f"checksum mismatch for {url}: expected sha256 {sha256.lower()}, got {actual}; the download was discarded"
            )
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    return dest
