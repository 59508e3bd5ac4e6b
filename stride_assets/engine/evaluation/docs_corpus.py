"""A text corpus from an installed package's docstrings, for LM benchmarks that need no download.

``package_passages("numpy")`` collects the docstrings (``inspect.getdoc``) of the public
functions and classes of a package and of some of its submodules, in sorted order of their
qualified names; a docstring shared by several names (aliases, inherited docs) is kept once, under
its first name. Each docstring is cut into passages of about ``chunk_chars`` characters on blank
lines, as the pydoc corpus is (``corpus.chunk_text``). The result depends only on the installed
version of the package (``package_version``), which the task built on it records in its name.
"""

from __future__ import annotations

import inspect
from importlib import import_module
from importlib.metadata import version

import polars as pl

from stride_assets.engine.config import CorpusConfig
from stride_assets.engine.corpus import _chunk_frame
from stride_assets.engine.errors import StrideInputError

# the namespaces read per package (the package itself first)
SUBMODULES = {"numpy": ["numpy", "numpy.linalg", "numpy.fft", "numpy.random"]}


def package_version(package: str) -> str:
    return version(package)


def docstrings(modules: list[str]) -> dict[str, str]:
    """{qualified name: docstring} of the public callables (functions, classes, ufuncs) of ``modules``.

    Names come from each module's ``__all__`` (else ``dir``), sorted; modules and non-callables
    (constants, whose ``getdoc`` is their type's) are skipped; a repeated docstring keeps its first name.
    """
    seen: dict[str, str] = {}
    for module_name in modules:
        module = import_module(module_name)
        for name in sorted(getattr(module, "__all__", None) or dir(module)):
            obj = getattr(module, name, None)
            if name.startswith("_") or obj is None or inspect.ismodule(obj) or not callable(obj):
                continue
            doc = inspect.getdoc(obj)
            if doc and doc.strip():
                seen.setdefault(doc, f"{module_name}.{name}")
    return {qualname: doc for doc, qualname in seen.items()}


def package_passages(package: str, cfg: CorpusConfig | None = None) -> pl.DataFrame:
    """The frame ``(example_id, text, source)`` of ``package``'s docstring passages, ids ``qualname/NNN``."""
    cfg = cfg or CorpusConfig()
    modules = SUBMODULES.get(package, [package])
    source = f"{package} {package_version(package)} docstrings"
    frames = [_chunk_frame(doc, qualname, 3, source, cfg) for qualname, doc in docstrings(modules).items()]
    df = pl.concat(frames, how="vertical") if frames else pl.DataFrame()
    if df.height == 0:
        raise StrideInputError(f"package {package!r}: no docstring passages of at least {cfg.min_chars} characters")
    return df
