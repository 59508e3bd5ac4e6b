"""Named artifacts on disk, written atomically (temp file + rename), with their arguments beside them.

A stage's output lives in ``<root>/<stage>/``; ``args.json`` there records the configuration
that produced it. A reader never sees a half-written file: every writer goes to a temporary
name in the same folder and renames over the target.
"""

from __future__ import annotations

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
    """Yield a temporary folder beside ``target``; swap it in for ``target`` if the block succeeds."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        yield tmp
        old = None
        if target.exists():
            old = target.with_name(f".{target.name}.old.{os.getpid()}")
            os.replace(target, old)
        os.replace(tmp, target)
        if old is not None:
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


class Store:
    """The storage root of one stride workspace: ``<root>/<stage>/[<key>/]...``.

    ``key`` names a partition of a stage (a shard, a query batch, or ``batch/shard``), each in a
    folder of its own so a partition is written, replaced and re-run without touching the others.
    """

    def __init__(self, root: str | os.PathLike[str]):
        self.root = Path(root).expanduser().resolve()

    def stage(self, name: str, key: str | None = None) -> Path:
        return self.root / name / key if key else self.root / name

    def path(self, stage: str, filename: str, key: str | None = None) -> Path:
        return self.stage(stage, key) / filename

    def write_args(self, stage: str, args: dict[str, Any], key: str | None = None) -> Path:
        return write_json(args, self.path(stage, "args.json", key))

    def read_args(self, stage: str, key: str | None = None) -> dict[str, Any]:
        return read_json(self.require(stage, "args.json", key))

    def require(self, stage: str, filename: str, key: str | None = None) -> Path:
        """The path of an upstream artifact, with a clear error when it was never produced."""
        p = self.path(stage, filename, key)
        if not p.exists():
            from stride_assets.engine.errors import StrideInputError

            where = f"the {stage!r} stage" + (f" for {key!r}" if key else "")
            raise StrideInputError(f"missing artifact {p}: materialize {where} first (storage root {self.root})")
        return p

    def __repr__(self) -> str:
        return f"Store({str(self.root)!r})"
