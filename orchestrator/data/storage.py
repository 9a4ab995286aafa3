"""Where datasets and sweeps live: local paths and object-storage URIs, through ``pyarrow.fs``."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psutil
import pyarrow as pa
import pyarrow.fs as pafs

from metasweep.orchestrator.errors import UserError

SHARED_FILESYSTEMS = ("nfs", "nfs4", "cifs", "smb3", "lustre", "gpfs", "ceph", "glusterfs", "beegfs")
"""File systems a path may live on so that every node of a cluster reads the same file."""


def filesystem(uri: str) -> tuple[pafs.FileSystem, str]:
    """A pyarrow filesystem and path for a local path or a URI (``file://``, ``s3://``, ``gs://``).

    S3-compatible stores: set ``AWS_ENDPOINT_URL`` (and ``AWS_ACCESS_KEY_ID`` /
    ``AWS_SECRET_ACCESS_KEY``), or put ``?endpoint_override=host:port&scheme=http`` on the URI.

    Raises:
        UserError: a URI pyarrow cannot open.
    """
    if "://" not in uri:
        return pafs.LocalFileSystem(), absolute(uri)
    if uri.startswith("s3://") and "endpoint_override" not in uri and os.environ.get("AWS_ENDPOINT_URL"):
        endpoint = os.environ["AWS_ENDPOINT_URL"]
        scheme, _, host = endpoint.partition("://")
        sep = "&" if "?" in uri else "?"
        uri = f"{uri}{sep}endpoint_override={host or scheme}&scheme={scheme if host else 'https'}"
    try:
        return pafs.FileSystem.from_uri(uri)
    except (pa.ArrowInvalid, OSError, ValueError) as exc:
        raise UserError(f"cannot open {uri.split('?')[0]}: {exc}") from None


def absolute(location: str) -> str:
    """A local path made absolute (``~`` expanded), or a URI (``s3://bucket/x``) as it is."""
    if "://" in location:
        return location.rstrip("/")
    return str(Path(location).expanduser().absolute())


def path_exists(uri: str) -> bool:
    """Whether a local path or an object-storage URI names an existing file or folder.

    Raises:
        UserError: the storage cannot be read.
    """
    fs, path = filesystem(uri)
    with _storage_errors(uri, "read"):
        return fs.get_file_info(path).type != pafs.FileType.NotFound


def folder_listing(uri: str) -> dict[str, bool]:
    """The names in a folder (a local path or a URI), each with whether it is a folder itself;
    empty when there is no such folder.

    Raises:
        UserError: the storage cannot be read.
    """
    fs, path = filesystem(uri)
    with _storage_errors(uri, "read"):
        listed = fs.get_file_info(pafs.FileSelector(path, allow_not_found=True))
    return {info.base_name: info.type == pafs.FileType.Directory for info in listed}


def read_bytes(uri: str) -> bytes:
    """The content of a file at a local path or a URI.

    Raises:
        UserError: the storage cannot be read.
    """
    fs, path = filesystem(uri)
    with _storage_errors(uri, "read"), fs.open_input_stream(path) as stream:
        return stream.readall()


def rename_folder(source: str, target: str) -> None:
    """Move a folder to a new name in the same storage: one atomic rename on a local disk; on
    object storage, which has no folders to rename, a copy of every object, then a delete.

    Raises:
        UserError: the storage cannot be written.
    """
    fs, source_path = filesystem(source)
    target_path = filesystem(target)[1]
    with _storage_errors(source, "write"):
        if fs.type_name == "local":
            fs.move(source_path, target_path)
            return
        pafs.copy_files(source_path, target_path, source_filesystem=fs, destination_filesystem=fs)
        fs.delete_dir(source_path)


def delete_folder(uri: str) -> None:
    """Delete a folder and everything in it, at a local path or a URI.

    Raises:
        UserError: the storage cannot be written.
    """
    fs, path = filesystem(uri)
    with _storage_errors(uri, "write"):
        fs.delete_dir(path)


@contextmanager
def _storage_errors(uri: str, doing: str) -> Iterator[None]:
    try:
        yield
    except OSError as exc:  # pyarrow's errors of the storage: not found, refused, unreachable
        raise UserError(f"cannot {doing} {uri.split('?')[0]}: {exc}") from None


def filesystem_type(path: Path) -> str:
    """The type of the file system ``path`` is on (``nfs4``, ``ext4``, ...; ``unknown`` if no
    mount point holds it), from the mount table psutil reads."""
    resolved = str(path.resolve())
    best, kind = "", "unknown"
    for partition in psutil.disk_partitions(all=True):
        point = partition.mountpoint
        inside = resolved == point or resolved.startswith(point.rstrip("/") + "/")
        if inside and len(point) > len(best):
            best, kind = point, partition.fstype
    return kind
