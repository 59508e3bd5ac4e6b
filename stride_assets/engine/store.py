"""The store: every artifact of a stride workspace by name, with its reader (the way TRAK's
``savers.py`` owns its store). No other module spells a file name of the store.

Layout: ``<root>/<stage>/[<key>/]<file>``; ``key`` names a partition of a stage (a shard, a
query batch, or ``batch/shard`` for a perturbation block), each in a folder of its own so a
partition is written, replaced and re-run without touching the others. ``args.json`` beside an
artifact records the configuration that made it. Writers go through ``artifacts`` (temp file +
rename): a reader never sees a half-written file.
"""

from __future__ import annotations

import fcntl
import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import polars as pl
import scipy.sparse as sp

from stride_assets.engine.artifacts import file_digest, read_json, write_json
from stride_assets.engine.design import SubsetDesign
from stride_assets.engine.errors import StrideInputError

# artifact name -> (stage folder, file name)
ARTIFACTS: dict[str, tuple[str, str]] = {
    "args": ("", "args.json"),
    "train": ("training_corpus", "train.parquet"),
    "holdout": ("training_corpus", "holdout.parquet"),
    "window_tokenizer": ("window_tokenizer", "tokenizer"),  # the tiny default's tokenizer of corpus.chunk_tokens
    "queries": ("query_set", "queries.parquet"),
    "model_ref": ("base_model", "model_ref.json"),
    "model": ("base_model", "model"),
    "lm_loss_plot": ("base_model", "lm_loss.png"),
    "membership": ("subset_design", "membership.parquet"),
    "operators": ("steering_operators", "operators.safetensors"),
    "training_log": ("steering_operators", "training_log.parquet"),
    "operator_loss_plot": ("steering_operators", "operator_loss.png"),
    "query_features": ("query_features", "features.safetensors"),  # the queries at the operators' site
    "responses": ("perturbation_matrix", "responses.parquet"),
    "responses_plot": ("perturbation_matrix", "responses.png"),
    "factors": ("influence_factors", "kronfluence"),  # Kronfluence's factor files (a folder)
    "scores": ("influence_scores", "scores.parquet"),
    "top_k": ("influence_scores", "top_k.parquet"),
    "per_query": ("influence_scores", "per_query.parquet"),
    "doc_scores": ("influence_scores", "doc_scores.parquet"),  # per (query, document): sum and max over its chunks
    "scores_plot": ("influence_scores", "scores.png"),
    "kept_vs_dropped_plot": ("curated_dataset", "kept_vs_dropped.png"),
    "curated_documents": ("curated_dataset", "documents.parquet"),  # per document: chunks kept and dropped
    "selected_vs_not_plot": ("selected_dataset", "selected_vs_not.png"),
    "leaks": ("contamination_report", "leaks.parquet"),
    "leaks_summary": ("contamination_report", "summary.md"),
    "leak_documents": ("contamination_report", "leak_documents.parquet"),  # leaks per (query, document)
    "overlap_plot": ("contamination_report", "overlap.png"),
    "attribution_report": ("attribution_report", "report.html"),  # one page per query batch
    "curation_page": ("curation_report", "curated.html"),
    "contamination_page": ("curation_report", "contamination.html"),
    "eval_subsets": ("eval_subsets", "eval_subsets.parquet"),
    "retrained_losses": ("retrained_losses", "{key}.parquet"),  # one file per retrain
    "lds": ("lds_report", "lds.parquet"),
    "untracked_run": ("untracked_mlflow", "{key}.json"),  # a stage's MLflow run kept while MLflow was down
}


LOCK_FILE = ".lock"
SEALS = "digests.json"  # beside sealed artifacts: {file name: sha256 when it was written}


def block_key(shard: str, batch: str) -> str:
    """Storage key of one perturbation block."""
    return f"{batch}/{shard}"


class Store:
    """The storage root of one stride workspace, and its named artifacts."""

    def __init__(self, root: str | os.PathLike[str]):
        self.root = Path(root).expanduser().resolve()

    def __repr__(self) -> str:
        return f"Store({str(self.root)!r})"

    # ------------------------------------------------------------ names
    def stage(self, name: str, key: str | None = None) -> Path:
        """The folder of a stage (of one of its partitions when ``key`` is given)."""
        if key and (Path(key).is_absolute() or any(part in ("", ".", "..") for part in key.split("/"))):
            raise StrideInputError(f"partition key {key!r} would leave the store's folder for stage {name!r}")
        return self.root / name / key if key else self.root / name

    def file(self, artifact: str, key: str | None = None, stage: str | None = None) -> Path:
        """Where a named artifact lives (``stage`` only for ``args``, which every stage has)."""
        if artifact not in ARTIFACTS:
            raise KeyError(f"unknown artifact {artifact!r}; artifacts are {', '.join(ARTIFACTS)}")
        folder, name = ARTIFACTS[artifact]
        folder = stage or folder
        if "{key}" in name:
            return self.stage(folder) / name.format(key=key)
        return self.stage(folder, key) / name

    def require(self, artifact: str, key: str | None = None, stage: str | None = None) -> Path:
        """The path of an upstream artifact, with a clear error when it was never produced."""
        p = self.file(artifact, key, stage)
        if not p.exists():
            owner = stage or ARTIFACTS[artifact][0]
            where = f"the {owner!r} stage" + (f" for {key!r}" if key else "")
            raise StrideInputError(f"missing artifact {p}: materialize {where} first (storage root {self.root})")
        return p

    # ------------------------------------------------------------ seals: content hashes checked on load
    def seal(self, *paths: Path) -> None:
        """Record the content hash of freshly written artifacts; ``verify`` checks it on every load."""
        for folder in {Path(p).parent for p in paths}:
            seals_path = folder / SEALS
            seals = read_json(seals_path) if seals_path.exists() else {}
            seals.update({Path(p).name: file_digest(p) for p in paths if Path(p).parent == folder})
            write_json(seals, seals_path)

    def verify(self, path: Path) -> Path:
        """``path``, after checking it still has the content recorded by ``seal`` (a clear error if not)."""
        seals_path = Path(path).parent / SEALS
        if seals_path.exists() and (expected := read_json(seals_path).get(Path(path).name)) is not None:
            if file_digest(path) != expected:
                rel = Path(path).relative_to(self.root) if Path(path).is_relative_to(self.root) else path
                raise StrideInputError(f"{path} changed since it was written (its content hash is not the "
                                       f"recorded {expected[:12]}): it was overwritten or truncated; re-materialize "
                                       f"{rel.parts[0]}" + (f" for {'/'.join(rel.parts[1:-1])}" if len(rel.parts) > 2
                                                            else ""))
        return Path(path)

    def intact(self, stage: str, key: str | None = None) -> bool:
        """Whether a stage's block is on disk (its args) with every sealed file as it was written."""
        folder = self.stage(stage, key)
        if not (folder / "args.json").exists():
            return False
        seals = read_json(folder / SEALS) if (folder / SEALS).exists() else {}
        return all((folder / name).exists() and file_digest(folder / name) == digest for name, digest in seals.items())

    def write_args(self, stage: str, args: dict[str, Any], key: str | None = None) -> Path:
        return write_json(args, self.file("args", key, stage))

    def read_args(self, stage: str, key: str | None = None) -> dict[str, Any]:
        return read_json(self.require("args", key, stage))

    # ------------------------------------------------------------ writers' safety
    @contextmanager
    def lock(self) -> Iterator[None]:
        """Hold the store for one writing process (``<root>/.lock``); a second one fails at once."""
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / LOCK_FILE, "a+") as fh:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                fh.seek(0)
                raise StrideInputError(f"store {self.root} is in use by another stride process "
                                       f"({fh.read().strip() or 'unknown pid'}): wait for it or use another --store")
            fh.seek(0)
            fh.truncate()
            fh.write(f"pid {os.getpid()}")
            fh.flush()
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def remove_temporaries(self) -> list[Path]:
        """Delete what a killed writer left (atomic writes' temp files and folders); call under ``lock``."""
        found = [p for p in self.root.rglob(".*") if p.name.endswith(".tmp") or ".old." in p.name]
        for path in found:
            shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
        return found

    # ------------------------------------------------------------ readers
    def read_corpus(self, shard: str, part: str = "train") -> pl.DataFrame:
        """One shard's training passages (``part="holdout"``: its held-out query candidates)."""
        return pl.read_parquet(self.verify(self.require(part, shard)))

    def read_train(self, shards: list[str]) -> pl.DataFrame:
        """The training parts of the shards, in order, with a global ``example_index`` and the ``shard``."""
        if not shards:
            raise StrideInputError("no shards: the corpus is empty (add data, or check corpus.paths)")
        frames, offset = [], 0
        for shard in shards:
            frame = self.read_corpus(shard)
            frames.append(frame.with_columns((pl.col("example_index").cast(pl.Int64) + offset).alias("example_index"),
                                             pl.lit(shard).alias("shard")))
            offset += frame.height
        return pl.concat(frames)

    def shard_version(self, shard: str) -> str | None:
        """A short content hash of a shard's stored passages (None before training_corpus ran)."""
        path = self.file("train", shard)
        return file_digest(path)[:16] if path.exists() else None

    def read_queries(self, batches: str | list[str]) -> pl.DataFrame:
        """The queries of one batch, or of several stacked."""
        names = [batches] if isinstance(batches, str) else batches
        return pl.concat([pl.read_parquet(self.verify(self.require("queries", b))) for b in names])

    def read_design(self, shard: str) -> SubsetDesign:
        pairs = pl.read_parquet(self.verify(self.require("membership", shard)))
        args = self.read_args("subset_design", shard)
        K, n = int(args["K"]), int(args["n"])
        M = sp.csr_matrix(
            (np.ones(pairs.height, dtype=np.float32), (pairs["subset"].to_numpy(), pairs["example_index"].to_numpy())),
            shape=(K, n),
        )
        return SubsetDesign(membership=M, seed=int(args["seed"]))

    def read_block_design(self, shards: list[str]) -> sp.csr_matrix:
        """The shards' membership matrices as one block-diagonal (sum K) x (sum n) matrix."""
        return sp.block_diag([self.read_design(s).membership for s in shards], format="csr", dtype=np.float32)

    def model_ref(self) -> dict[str, Any]:
        """What the base_model stage recorded: the model's path and how to load it."""
        return read_json(self.require("model_ref"))

    def load_base_model(self):
        """The frozen base model and tokenizer recorded by the base_model stage."""
        from stride_assets.engine import lm

        ref = self.model_ref()
        return lm.load_model(ref["path"], tokenizer_path=ref.get("tokenizer_path"),
                             trust_remote_code=ref["trust_remote_code"], dtype=ref["dtype"])

    def load_bank(self, shard: str):
        """One shard's operator bank and the arguments that trained it."""
        from stride_assets.engine.operators import OperatorBank

        args = self.read_args("steering_operators", shard)
        path = self.verify(self.require("operators", shard))
        self.verify(path.with_suffix(".json"))
        return OperatorBank.load(path), args

    def load_query_features(self, batch: str, form: str, layer: int | None, query_ids: list[str],
                            device: str = "cpu"):
        """Query batch ``batch``'s features at the site of ``form`` / ``layer``, its base losses and (logit
        site) its tokens' base log-normalisers (else None), checked to be of the same queries and site as the
        operators about to use them."""
        from stride_assets.engine.artifacts import load_tensors

        args = self.read_args("query_features", batch)
        if (args["form"], args["layer"]) != (form, layer):
            raise StrideInputError(f"query_features[{batch}] are at the {args['form']} site (layer {args['layer']}) "
                                   f"but the operators at the {form} site (layer {layer}): re-materialize "
                                   f"query_features[{batch}] with the operators' settings")
        if args["query_ids"] != query_ids:
            raise StrideInputError(f"query_features[{batch}] are of another version of query batch {batch!r}: "
                                   "re-materialize them")
        tensors = load_tensors(self.verify(self.require("query_features", batch)), device)
        return tensors["features"], tensors["base_loss"].numpy(), tensors.get("lse")

    def read_responses(self, batch: str, shards: list[str]) -> tuple[pl.DataFrame, np.ndarray]:
        """The batch's responses to every shard's operators, side by side: (query frame, Q x sum K)."""
        meta, blocks = None, []
        for shard in shards:
            frame = pl.read_parquet(self.verify(self.require("responses", block_key(shard, batch))))
            if meta is None:
                meta = frame.drop("response")
            elif frame["query_id"].to_list() != meta["query_id"].to_list():
                raise StrideInputError(f"responses of shard {shard!r} are for another version of query batch "
                                       f"{batch!r}: re-materialize its perturbation_matrix block")
            blocks.append(np.asarray(frame["response"].to_numpy(), dtype=np.float64))
        if meta is None:
            raise StrideInputError("no shards: the corpus is empty (add data, or check corpus.paths)")
        return meta, np.hstack(blocks)

    def read_scores(self, batches: list[str], artifact: str = "scores") -> pl.DataFrame:
        """The influence scores (``artifact="top_k"``: the top-k tables) of the query batches, stacked."""
        return pl.concat([pl.read_parquet(self.verify(self.require(artifact, b))) for b in batches])

    def read_doc_scores(self, batches: list[str]) -> pl.DataFrame:
        """Per-document influence of the query batches, stacked: query_id, doc_id, score_sum, score_max, chunks."""
        return self.read_scores(batches, "doc_scores")

    def scored_inputs(self, batches: list[str], shards: list[str]) -> list[Path]:
        """The files a curated output is derived from: the batches' scores and the shards' passages."""
        return [self.require("scores", b) for b in batches] + [self.require("train", s) for s in shards]

    def read_dataset(self, stage: str, split: str) -> pl.DataFrame:
        """A split of the current version of a curated output (``datasets_out`` layout)."""
        from stride_assets.engine.datasets_out import read_current

        return read_current(self.stage(stage), split)

    def read_eval_subsets(self) -> np.ndarray:
        """The evaluation subsets as an (m, n) boolean matrix."""
        frame = pl.read_parquet(self.require("eval_subsets"))
        args = self.read_args("eval_subsets")
        out = np.zeros((int(args["m"]), int(args["n"])), dtype=bool)
        out[frame["subset_id"].to_numpy(), frame["example_index"].to_numpy()] = True
        return out

    def read_retrained_losses(self) -> pl.DataFrame:
        """Every materialized retrain's query losses (subset_id, query_id, loss), by subset."""
        folder, pattern = ARTIFACTS["retrained_losses"]
        parts = sorted(self.stage(folder).glob(pattern.format(key="retrain_*")))
        if not parts:
            return pl.DataFrame(schema={"subset_id": pl.Int64, "query_id": pl.String, "loss": pl.Float64})
        return pl.concat([pl.read_parquet(p) for p in parts]).sort("subset_id")

    def untracked_runs(self) -> list[Path]:
        """The MLflow runs kept while MLflow was unreachable (logged by ``stride mlflow-sync``)."""
        folder, pattern = ARTIFACTS["untracked_run"]
        return sorted(self.stage(folder).glob(pattern.format(key="*")))

    def read_lds(self) -> pl.DataFrame:
        return pl.read_parquet(self.require("lds"))


# A benchmark's output folder (``stride bench ... --out DIR``): artifact name -> file under DIR.
BENCH_ARTIFACTS: dict[str, str] = {
    "report": "report.json",
    "eval_subsets": "eval_subsets.parquet",
    "retrained_losses": "retrained_losses.parquet",
    "scores": "scores/{key}.parquet",  # one file per method
    "cache": "cache",  # retrained losses kept between runs
    "planted": "planted.parquet",
    "audit": "audit.parquet",
    "audit_summary": "audit.md",
    "recall_curves": "recall_curves.png",
    "data": "data",  # shard files a scenario writes
    "store": "store-{key}",  # a pipeline store a scenario fills
}


class BenchFolder:
    """The output folder of one benchmark run, by artifact name (``BENCH_ARTIFACTS``)."""

    def __init__(self, root: str | os.PathLike[str]):
        self.root = Path(root)

    def file(self, artifact: str, key: str | None = None) -> Path:
        if artifact not in BENCH_ARTIFACTS:
            raise KeyError(f"unknown benchmark artifact {artifact!r}; artifacts are {', '.join(BENCH_ARTIFACTS)}")
        name = BENCH_ARTIFACTS[artifact]
        return self.root / (name.format(key=key) if "{key}" in name else name)
