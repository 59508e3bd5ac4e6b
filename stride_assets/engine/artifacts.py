"""Writing artifacts atomically (temp file + rename) and hashing them.

A reader never sees a half-written file: every writer goes to a temporary name in the same
folder and renames over the target. Which artifacts exist and where: ``store.py``.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import polars as pl


@contextmanager
def atomic_path(target: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; rename it over ``target`` if the block succeeds."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, target)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


@contextmanager
def atomic_dir(target: Path) -> Iterator[Path]:
    """Yield a temporary folder beside ``target``; swap it in for ``target`` if the block succeeds.

    A folder cannot be renamed over a non-empty one, so the old version is moved aside first (to a
    name of this writer's own); when another writer swaps its version in between, that one is moved
    aside in turn: the last complete version wins and none is ever half-written.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        yield tmp
        for attempt in range(100):
            old = target.with_name(f".{target.name}.old.{os.getpid()}.{tmp.name[-12:-4]}.{attempt}")
            try:
                os.replace(target, old)
            except FileNotFoundError:
                pass
            try:
                os.replace(tmp, target)
                break
            except OSError as exc:  # another writer's version landed after ours was moved aside
                if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST) or attempt == 99:
                    raise
            finally:
                shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def write_parquet(df: pl.DataFrame, path: Path) -> Path:
    with atomic_path(path) as tmp:
        df.write_parquet(tmp)
    return Path(path)


def write_json(obj: Any, path: Path) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str))
    return Path(path)


def write_text(text: str, path: Path) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text())


def save_tensors(tensors: dict[str, Any], path: Path) -> Path:
    """Save a flat dict of torch tensors as safetensors, atomically.

    No header metadata on purpose: safetensors writes that map in random order, so identical
    tensors would give different bytes (and content hashes). Put arguments in a JSON beside it.
    """
    from safetensors.torch import save_file

    with atomic_path(path) as tmp:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp))
    return Path(path)


def load_tensors(path: Path, device: str = "cpu") -> dict[str, Any]:
    from safetensors.torch import load_file

    return load_file(str(path), device=device)


def file_digest(*paths: Path, chunk: int = 1 << 20) -> str:
    """sha256 over the bytes of the given files (or every file under given folders), in order."""
    h = hashlib.sha256()
    for p in paths:
        p = Path(p)
        files = sorted(q for q in p.rglob("*") if q.is_file() and not q.name.startswith(".")) if p.is_dir() else [p]
        for f in files:
            h.update(f.name.encode())
            with f.open("rb") as fh:
                while block := fh.read(chunk):
                    h.update(block)
    return h.hexdigest()
