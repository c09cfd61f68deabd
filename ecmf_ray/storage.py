"""Paths that are local folders or s3:// URIs, behind one small API (fsspec + s3fs underneath).

The S3 endpoint comes from ``$AWS_ENDPOINT_URL`` (set from ``storage.endpoint_url`` by
:func:`use_endpoint` before a job touches storage, and passed to Ray workers by
:func:`ecmf_ray.runtime.init_ray`), so every process on every node resolves the same bucket.
"""

from __future__ import annotations

import io
import os
import uuid
from typing import IO, Any

import fsspec
import pandas as pd
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

REMOTE_SCHEMES = ("s3://", "gs://", "gcs://", "abfs://", "az://")


def use_endpoint(endpoint_url: str | None) -> None:
    """Make ``endpoint_url`` (config ``storage.endpoint_url``; None: keep the environment's) the S3 endpoint."""
    if endpoint_url:
        os.environ["AWS_ENDPOINT_URL"] = str(endpoint_url)


def is_remote(uri: str) -> bool:
    return str(uri).startswith(REMOTE_SCHEMES)


def join(base: str, *parts: str) -> str:
    base = str(base)
    if is_remote(base):
        return "/".join([base.rstrip("/"), *(p.strip("/") for p in parts)])
    return os.path.join(os.path.expanduser(base), *parts)


def resolve(uri: str, relative_to: str) -> str:
    """``uri`` as an absolute local path or URI; relative paths are taken against ``relative_to``."""
    uri = str(uri)
    if is_remote(uri) or os.path.isabs(os.path.expanduser(uri)):
        return os.path.expanduser(uri)
    return join(relative_to, uri)


def get_fs(uri: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """The fsspec filesystem for ``uri`` and the path inside it."""
    uri = str(uri)
    if is_remote(uri):
        options: dict[str, Any] = {}
        endpoint = os.environ.get("AWS_ENDPOINT_URL")
        if uri.startswith("s3://") and endpoint:
            options["endpoint_url"] = endpoint
        return fsspec.core.url_to_fs(uri, **options)
    return fsspec.filesystem("file"), os.path.abspath(os.path.expanduser(uri))


def pyarrow_fs(uri: str) -> tuple[pafs.FileSystem, str]:
    """A pyarrow filesystem for Ray Data reads/writes that honours the same endpoint as s3fs."""
    fs, path = get_fs(uri)
    if not is_remote(uri):
        return pafs.LocalFileSystem(), path
    return pafs.PyFileSystem(pafs.FSSpecHandler(fs)), path


def exists(uri: str) -> bool:
    fs, path = get_fs(uri)
    return fs.exists(path)


def makedirs(uri: str) -> None:
    fs, path = get_fs(uri)
    if not is_remote(uri):
        fs.makedirs(path, exist_ok=True)


def remove(uri: str, recursive: bool = False) -> None:
    fs, path = get_fs(uri)
    if fs.exists(path):
        fs.rm(path, recursive=recursive)


def listdir(uri: str) -> list[str]:
    """Names (not paths) directly under a folder; empty if it does not exist."""
    fs, path = get_fs(uri)
    if not fs.exists(path):
        return []
    return sorted(os.path.basename(p.rstrip("/")) for p in fs.ls(path, detail=False))


def open_file(uri: str, mode: str = "rb") -> IO:
    fs, path = get_fs(uri)
    return fs.open(path, mode)


def write_bytes(uri: str, data: bytes) -> None:
    """Write a whole file so that a reader never sees half of it.

    Local: a temporary sibling then an atomic rename. Object stores: a single PUT is atomic already.
    """
    fs, path = get_fs(uri)
    if is_remote(uri):
        fs.pipe_file(path, data)
        return
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def read_bytes(uri: str) -> bytes:
    fs, path = get_fs(uri)
    return fs.cat_file(path)


def write_text(uri: str, text: str) -> None:
    write_bytes(uri, text.encode("utf-8"))


def read_text(uri: str) -> str:
    return read_bytes(uri).decode("utf-8")


def write_table(table: pa.Table | pd.DataFrame, uri: str) -> None:
    """Write a Parquet file atomically."""
    if isinstance(table, pd.DataFrame):
        table = pa.Table.from_pandas(table, preserve_index=False)
    buf = io.BytesIO()
    pq.write_table(table, buf)
    write_bytes(uri, buf.getvalue())


def read_table(uri: str) -> pa.Table:
    """Read a Parquet file or a folder of Parquet files."""
    fs, path = pyarrow_fs(uri)
    return pq.read_table(path, filesystem=fs)


def write_csv(df: pd.DataFrame, uri: str) -> None:
    write_text(uri, df.to_csv(index=False))
