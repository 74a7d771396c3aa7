"""The worker's steps, each reading and extending one bundle.

``etl`` creates a new version; every later step opens the latest (or ``--version``)
and adds its files, hashed into the manifest. ``run`` does them all in order.
"""

from __future__ import annotations

import contextlib
import json
import logging
import resource
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import polars as pl

from offline import etl
from offline.config import STEP_SECTIONS, PipelineConfig
from offline.datasets import load_dataset
from offline.datasets.synthetic import SyntheticConfig, TrueValue
from offline.evaluate import evaluate, held_out, retrieve, tune_retrieval_weight
from offline.index import IndexConfig, build_index
from offline.probes import probe_set
from offline.publish import publish
from offline.training.loop import distributed
from offline.training.ranking import ranking_data, score_weights, train_ranker
from offline.training.retrieval import embed_items, embed_users, train_retrieval
from offline.training.tracking import Tracking
from shared.bundle import Bundle, Files, atomic_path
from shared.config import build
from shared.errors import ConfigError
from shared.feature_map import FeatureMap
from shared.features import FeatureTables
from shared.keys import Keys
from shared.models.checkpoint import checkpoint_paths, load_model, save_model
from shared.models.scoring import (
    ServingHead,
    UserVectors,
    export_head,
    export_onnx,
    onnx_difference,
    onnx_parity,
    split_tables,
)
from shared.models.towers import TwoTower
from shared.probes import write_probes
from shared.recall import SeenItems, merge, nearest
from shared.schema import Dataset, DatasetSpec
from shared.settings import masked
from shared.store import connect

__all__ = ["STEPS", "Context", "item_names", "run_step"]

log = logging.getLogger(__name__)


@dataclass
class Context:
    config: PipelineConfig
    artifacts: Path
    redis_url: str
    key_prefix: str = "recsys:"
    redis_cluster: bool = False  # redis_url is a node of a Redis Cluster
    version: str | None = None
    bundle: Bundle | None = None
    cache: dict[str, Any] = field(default_factory=dict)
    dataset: Dataset | None = None  # tables already in memory: etl reads these, not the source
    resume: bool = False  # training steps continue from the bundle's checkpoints

    def tracking(self, stage: str = "") -> Tracking:
        """Where training leaves checkpoints and logs: ``<bundle>/runs/`` (``runs/refit/``)."""
        return Tracking(self.open_bundle().root / "runs" / stage, self.resume)

    def open_bundle(self) -> Bundle:
        if self.bundle is None:
            self.bundle = Bundle.open(self.artifacts, self.version)
            self.bundle.verify(
                required=(Files.INTERACTIONS, Files.USERS, Files.ITEMS, Files.FEATURE_MAP)
            )
        return self.bundle

    def spec(self) -> DatasetSpec:
        return DatasetSpec.from_dict(json.loads(self.open_bundle().path(Files.SPEC).read_text()))

    def interactions(self) -> pl.DataFrame:
        if "interactions" not in self.cache:
            self.cache["interactions"] = pl.read_parquet(
                self.open_bundle().path(Files.INTERACTIONS)
            )
        return self.cache["interactions"]

    def tables(self) -> FeatureTables:
        if "tables" not in self.cache:
            b = self.open_bundle()
            self.cache["tables"] = FeatureTables.from_frames(
                pl.read_parquet(b.path(Files.USERS)),
                pl.read_parquet(b.path(Files.ITEMS)),
                self.spec(),
                FeatureMap.load(b.path(Files.FEATURE_MAP)),
            )
        return self.cache["tables"]

    def ranking_data(self) -> dict:
        if "ranking_data" not in self.cache:
            self.cache["ranking_data"] = ranking_data(
                self.tables(), self.interactions(), self.spec(), self.config.ranking
            )
        return self.cache["ranking_data"]


def _save_array(bundle: Bundle, name: str, array: np.ndarray) -> None:
    with atomic_path(bundle.path(name)) as tmp, tmp.open("wb") as f:
        np.save(f, array)
    bundle.add(name)


def _save(bundle: Bundle, model: Any, config: Any, name: str) -> None:
    save_model(model, config, bundle.path(name))
    bundle.add(*(p.name for p in checkpoint_paths(bundle.path(name))))


def _record_history(bundle: Bundle, name: str, history: Any) -> None:
    path = bundle.path(Files.HISTORY)
    data = json.loads(path.read_text()) if path.is_file() else {}
    data[name] = {
        "epochs": history.epochs,
        "best_epoch": history.best_epoch,
        "samples_per_s": history.samples_per_s,
    }
    bundle.write_json(Files.HISTORY, data)


def etl_step(ctx: Context) -> Iterator[str]:
    c = ctx.config
    dataset = ctx.dataset or load_dataset(c.dataset, c.data_dir, c.dataset_options)
    result = etl.run(dataset, c.etl)
    bundle = Bundle.create(ctx.artifacts, c.dataset, c.model_dump(mode="json"))
    try:
        etl.write(result, bundle)
        bundle.finish()
    except BaseException:
        bundle.discard()
        raise
    ctx.bundle, ctx.cache = bundle, {}
    s = result.stats
    split = ", ".join(f"{k} {v}" for k, v in sorted(s["split"].items()))
    yield f"etl: {s['users']} users, {s['items']} items, {s['interactions']} interactions ({split})"
    yield f"etl: {s['feature_slots']} feature slots; wrote {bundle.root}"


def train_retrieval_step(ctx: Context) -> Iterator[str]:
    bundle = ctx.open_bundle()
    result = train_retrieval(
        ctx.tables(), ctx.interactions(), ctx.spec(), ctx.config.retrieval, ctx.tracking()
    )
    rank, _ = distributed()
    if rank == 0:
        _save(bundle, result.model, result.config, Files.TWO_TOWER)
        _record_history(bundle, "two_tower", result.history)
    ctx.cache[Files.TWO_TOWER] = result.model
    h, k = result.history, ctx.config.retrieval.eval_k
    yield (
        f"train-retrieval: best valid recall@{k} {h.best_metric:.4f} "
        f"(epoch {h.best_epoch}), {h.samples_per_s:,.0f} samples/s"
    )
    if result.prior_recall:
        tried = ", ".join(f"{b:g}: {r:.4f}" for b, r in result.prior_recall.items())
        yield (
            f"train-retrieval: popularity prior {result.config.popularity_prior:g} "
            f"(valid recall@{k} {tried})"
        )
    if got := result.content_recall:
        c = result.config
        yield (
            f"train-retrieval: new items' content prior l2 {c.content_prior_l2:g}, weight "
            f"{c.content_prior:g} (validation's {len(got)} tried: new items ranked among "
            f"themselves, recall@{k} {min(got.values()):.4f} to {max(got.values()):.4f})"
        )


def train_ranking_step(ctx: Context) -> Iterator[str]:
    bundle, config, spec = ctx.open_bundle(), ctx.config.ranking, ctx.spec()
    data = ctx.ranking_data()
    weights = score_weights(spec, config)
    rank, _ = distributed()
    retrieval_weights = {}
    valid = None
    value = _true_value(bundle)  # the world's pricing of lists, on synthetic data
    for kind in config.models:
        result = train_ranker(kind, ctx.tables(), data, spec, config, ctx.tracking())
        if rank == 0:
            _save(bundle, result.model, result.config, Files.RANKER.format(kind=kind))
            _record_history(bundle, kind, result.history)
        ctx.cache[Files.RANKER.format(kind=kind)] = result.model
        h = result.history
        yield f"train-ranking: {kind} best valid AUC {h.best_metric:.4f} (epoch {h.best_epoch}), {h.samples_per_s:,.0f} samples/s"
        if config.retrieval_weight is not None:
            retrieval_weights[kind] = config.retrieval_weight
            continue
        if valid is None:  # the validation candidates, shared by every ranker
            on = ctx.config.evaluate  # as many candidates and users as evaluation reads
            split = held_out(ctx.tables(), ctx.interactions(), spec, "valid", on.max_users)
            n = on.candidates
            valid = (split, *retrieve(_model(ctx, Files.TWO_TOWER), ctx.tables(), split, n)[:2])
        best, tried = tune_retrieval_weight(
            result.model, ctx.tables(), *valid, weights, config.retrieval_weight_grid, value
        )
        retrieval_weights[kind] = best
        by = "valid top-10 expected clicks" if value else "valid ndcg@10"
        listed = ", ".join(f"{w:g}: {v:.4f}" for w, v in tried.items())
        yield f"train-ranking: {kind} retrieval weight {best:g} ({by} {listed})"
    bundle.update_manifest(
        serving={
            "score_weights": weights,
            "retrieval_weights": retrieval_weights,
            "rankers": list(config.models),
        }
    )


def _model(ctx: Context, name: str) -> Any:
    if name not in ctx.cache:
        ctx.cache[name] = load_model(ctx.open_bundle().path(name))
    return ctx.cache[name]


def index_step(ctx: Context) -> Iterator[str]:
    bundle, cfg, tables = ctx.open_bundle(), ctx.config.index, ctx.tables()
    model = _model(ctx, Files.TWO_TOWER)
    vectors = embed_items(model, tables).numpy()  # (I, O + 1), row 0 = unknown item
    _save_array(bundle, Files.ITEM_EMBEDDINGS, vectors)
    user_rows = np.arange(1, len(tables.users))
    user_vectors = embed_users(model, tables, user_rows).numpy()
    rng = np.random.default_rng(0)
    queries = user_vectors[
        rng.choice(len(user_vectors), min(cfg.quality_queries, len(user_vectors)), replace=False)
    ]
    index, quality = build_index(vectors[1:], cfg, queries)  # FAISS id j ↔ item row j + 1
    with atomic_path(bundle.path(Files.INDEX)) as tmp:
        faiss.write_index(index, str(tmp))
    if quality["recall_vs_exact"] < cfg.recall_floor:
        raise ConfigError(
            f"index recall@{cfg.recall_k} vs exact search is {quality['recall_vs_exact']:.3f}, "
            f"below the floor {cfg.recall_floor}: raise hnsw_ef_search / ivf_nprobe "
            "(auto: auto_ef_search / auto_nprobe)"
        )

    # batch recall for every known user
    items = pl.read_parquet(bundle.path(Files.ITEMS), columns=["item_idx", "hot_score"])
    hot = items.sort("hot_score", descending=True).head(cfg.hot_n)
    hot_rows = hot["item_idx"].to_numpy()
    pairs = ctx.interactions()
    seen = SeenItems.build(
        pairs["user_idx"].to_numpy(), pairs["item_idx"].to_numpy(), len(tables.users), len(vectors)
    )
    merged = _batch_recall(index, user_vectors, user_rows, seen, hot_rows, cfg)
    bundle.update_manifest(
        serving={"hot_every": cfg.hot_every, "lists_exclude_seen": cfg.exclude_seen}
    )
    _save_array(
        bundle,
        Files.USER_EMBEDDINGS,
        embed_users(model, tables, np.arange(len(tables.users))).numpy(),
    )
    with atomic_path(bundle.path(Files.RECALL)) as tmp:
        pl.DataFrame({"user_idx": user_rows, "items": merged}).write_parquet(tmp)
    with atomic_path(bundle.path(Files.HOT)) as tmp:
        hot.write_parquet(tmp)
    bundle.add(Files.INDEX, Files.RECALL, Files.HOT)
    _merge_metrics(bundle, {"index": quality})
    yield (
        f"index: {quality['type']} over {quality['items']} items, recall@{quality['k']} vs exact "
        f"{quality['recall_vs_exact']:.3f}, {quality['index_qps']:,.0f} queries/s; "
        f"recall lists for {len(user_rows)} users"
    )


RECALL_BLOCK = 4096  # users searched at once by the index step's batch recall


def _batch_recall(
    index: faiss.Index,
    user_vectors: np.ndarray,
    user_rows: np.ndarray,
    seen: SeenItems,
    hot_rows: np.ndarray,
    cfg: IndexConfig,
) -> np.ndarray:
    """(U, recall_k) each user's published list (:func:`shared.recall.merge`). Users go
    in blocks of :data:`RECALL_BLOCK` by how much they have seen, each block searching
    ``recall_k`` plus its own most-seen count, so that one heavy user never makes every
    user's search (and memory) that deep."""
    counts = np.diff(seen.indptr)[user_rows] if cfg.exclude_seen else np.zeros(len(user_rows))
    by_seen = np.argsort(counts, kind="stable")
    merged = np.zeros((len(user_rows), cfg.recall_k), dtype=np.int64)
    for lo in range(0, len(user_rows), RECALL_BLOCK):
        block = by_seen[lo : lo + RECALL_BLOCK]
        rows = user_rows[block]
        recalled = nearest(index, user_vectors[block], cfg.recall_k + int(counts[block].max()))
        banned = None
        if cfg.exclude_seen:
            hot = np.broadcast_to(hot_rows, (len(block), len(hot_rows)))
            banned = seen.contains(rows, np.concatenate([recalled, hot], axis=1))
        merged[block] = merge(recalled, hot_rows, cfg.recall_k, cfg.hot_every, banned)
    return merged


def export_step(ctx: Context) -> Iterator[str]:
    """Each ranker's serving form: per-side tables, the ONNX head checked against torch,
    and the probe set the gateway must reproduce before it serves the version."""
    bundle, tables = ctx.open_bundle(), ctx.tables()
    serving = bundle.manifest().get("serving", {})
    towers = _model(ctx, Files.TWO_TOWER)
    probes = {}
    for kind in serving.get("rankers", list(ctx.config.ranking.models)):
        ranker = _model(ctx, Files.RANKER.format(kind=kind))
        retrieval_weight = serving.get("retrieval_weights", {}).get(kind, 0.0)
        head = ServingHead(ranker, serving["score_weights"], retrieval_weight)
        for part, array in split_tables(ranker, tables, sides=("user", "item")).items():
            _save_array(bundle, Files.RANKER_SPLIT.format(kind=kind, part=part), array)
        name = Files.RANKER_HEAD.format(kind=kind)
        width = ranker.sparse_arch.embedding.embedding_dim
        with atomic_path(bundle.path(name)) as tmp:
            export_head(head, ranker.config.n_fields, width, tmp)
            error = onnx_parity(head, tmp, ranker.config.n_fields, width)
        bundle.add(name)
        probes[kind] = probe_set(ranker, towers, tables, serving["score_weights"], retrieval_weight)
        yield f"export: {kind}: ONNX head (max |onnx − torch| {error:.1e}) and per-side tables"
    with atomic_path(bundle.path(Files.PROBES)) as tmp:
        write_probes(tmp, probes)
    bundle.add(Files.PROBES)
    # the user tower as ONNX, for scoring histories newer than the bundle's: serving reads
    # the precomputed user_embeddings.npy of the served histories
    tower = UserVectors(towers.user_tower if isinstance(towers, TwoTower) else towers)
    example = tuple(tables.user_inputs(np.arange(min(len(tables.users), 64))))
    with atomic_path(bundle.path(Files.USER_TOWER)) as tmp:
        export_onnx(tower, example, UserVectors.INPUTS, ("vector",), tmp)
        error = onnx_difference(tower, example, UserVectors.INPUTS, tmp)
    bundle.add(Files.USER_TOWER)
    n = sum(len(p) for p in probes.values())
    yield f"export: user tower: ONNX (max |onnx − torch| {error:.1e}); {n} probe users"


def refit_step(ctx: Context) -> Iterator[str]:
    """Retrain every model on every interaction for serving, then index and export again.

    The evaluated models never saw each user's latest interactions (the valid and test
    parts), the most telling of what comes next. A refit trains each model again on all
    of them, for the number of epochs early stopping chose, and replaces the served
    weights; ``metrics.json`` and the report keep the evaluated models' held-out numbers.
    """
    bundle, spec, tables, c = ctx.open_bundle(), ctx.spec(), ctx.tables(), ctx.config
    if not c.serving.refit:
        yield "refit: off (serving.refit); serving the evaluated weights"
        return
    history_path = bundle.path(Files.HISTORY)
    best = {k: v["best_epoch"] for k, v in json.loads(history_path.read_text()).items()}
    everything = ctx.interactions().with_columns(split=pl.lit("train"))
    rank, _ = distributed()
    refit = {}

    def epochs(name: str, trainer: Any) -> Any:
        return trainer.model_copy(update={"epochs": max(1, best.get(name, trainer.epochs))})

    started = time.perf_counter()
    evaluated = _model(ctx, Files.TWO_TOWER).config  # its β, content prior weight and l2
    retrieval = c.retrieval.model_copy(
        update={
            "trainer": epochs("two_tower", c.retrieval.trainer),
            "popularity_prior": evaluated.popularity_prior,
            # (off: content_prior false, the grids unread)
            "content_prior_grid": (evaluated.content_prior or 0.0,),
            "content_prior_l2_grid": (evaluated.content_prior_l2,),
        }
    )
    result = train_retrieval(tables, everything, spec, retrieval, ctx.tracking("refit"))
    if rank == 0:
        _save(bundle, result.model, result.config, Files.TWO_TOWER)
    ctx.cache[Files.TWO_TOWER] = result.model
    refit["two_tower"] = retrieval.trainer.epochs
    kinds = bundle.manifest().get("serving", {}).get("rankers", list(c.ranking.models))
    data = ranking_data(tables, everything, spec, c.ranking)
    for kind in kinds:
        ranking = c.ranking.model_copy(update={"trainer": epochs(kind, c.ranking.trainer)})
        ranker = train_ranker(kind, tables, data, spec, ranking, ctx.tracking("refit"))
        name = Files.RANKER.format(kind=kind)
        if rank == 0:
            _save(bundle, ranker.model, ranker.config, name)
        ctx.cache[name] = ranker.model
        refit[kind] = ranking.trainer.epochs
    served = {
        "weights": "refit",
        "interactions": everything.height,
        "epochs": refit,
        "seconds": time.perf_counter() - started,
    }
    bundle.update_manifest(serving={"refit": served})
    report = bundle.path(Files.REPORT)
    if rank == 0 and report.is_file():
        note = ", ".join(f"{k} {n}" for k, n in refit.items())
        text = (
            report.read_text().rstrip()
            + "\n\n## Served weights\n\nThe numbers above are the evaluated models' on "
            "held-out data. The served models were then refit on all "
            f"{everything.height} interactions (epochs: {note}), as `serving.refit` asks.\n"
        )
        with atomic_path(report) as tmp:
            tmp.write_text(text, encoding="utf-8")
        bundle.add(Files.REPORT)
    trained = ", ".join(f"{k} {n} epochs" for k, n in refit.items())
    yield f"refit: every model retrained on all {everything.height} interactions ({trained})"
    yield from index_step(ctx)
    yield from export_step(ctx)


def _merge_metrics(bundle: Bundle, new: dict[str, Any]) -> dict[str, Any]:
    path = bundle.path(Files.METRICS)
    data = json.loads(path.read_text()) if path.is_file() else {}
    data.update(new)
    bundle.write_json(Files.METRICS, data)
    bundle.update_manifest(metrics=data)
    return data


def _true_value(bundle: Bundle) -> TrueValue | None:
    """The synthetic world's pricing of lists, when the bundle's data came from it (or
    was logged serving a bundle that did: ``origin`` in the ETL stats)."""
    origin = bundle.manifest().get("etl", {}).get("origin") or {}
    if "synthetic" not in origin:
        return None
    return TrueValue.of(build(SyntheticConfig, origin["synthetic"], "the synthetic origin"))


def item_names(items: pl.DataFrame, n_rows: int) -> np.ndarray | None:
    """Each item row's id and title (``"1 Toy Story (1995)"``), when the ETL's items
    table has titles (MovieLens); row 0, the unknown item, is ``""``."""
    if "title" not in items.columns:
        return None
    names = np.empty(n_rows, dtype=object)
    names[0] = ""
    rows = items["item_idx"].to_numpy()
    names[rows] = (items["item_id"] + " " + items["title"].fill_null("")).to_numpy()
    return names


def evaluate_step(ctx: Context) -> Iterator[str]:
    from offline.report import write_report  # noqa: PLC0415  (matplotlib only when reporting)

    bundle, spec = ctx.open_bundle(), ctx.spec()
    manifest = bundle.manifest()
    serving = manifest.get("serving", {})
    kinds = serving.get("rankers", list(ctx.config.ranking.models))
    rankers = {k: _model(ctx, Files.RANKER.format(kind=k)) for k in kinds}
    metrics, diagnostics, samples = evaluate(
        ctx.tables(),
        ctx.interactions(),
        spec,
        _model(ctx, Files.TWO_TOWER),
        rankers,
        score_weights(spec, ctx.config.ranking),
        serving.get("retrieval_weights", {}),
        ctx.ranking_data()["test"],
        ctx.config.evaluate,
        _true_value(bundle),
        item_names(pl.read_parquet(bundle.path(Files.ITEMS)), len(ctx.tables().items)),
    )
    # the diagnostics, but the per-item norms (the report plots them), kept with the metrics
    metrics["diagnostics"] = {k: v for k, v in diagnostics.items() if k != "item_norms"}
    data = _merge_metrics(bundle, metrics)
    history_path = bundle.path(Files.HISTORY)
    histories = (
        {k: v["epochs"] for k, v in json.loads(history_path.read_text()).items()}
        if history_path.is_file()
        else {}
    )
    written = write_report(bundle.root, data, histories, diagnostics, samples)
    bundle.add(*written)
    k = max(ctx.config.evaluate.ks)
    r, p = metrics["retrieval"], metrics["popularity"]
    yield f"evaluate: two-tower recall@{k} {r[f'recall@{k}']:.4f} vs popularity {p[f'recall@{k}']:.4f}; ndcg@10 {r['ndcg@10']:.4f}"
    lists = ", ".join(
        f"{name} {v['recall@50']:.4f} / {v['recall@100']:.4f}"
        for name, v in metrics["recall_lists"].items()
    )
    yield f"evaluate: published list recall@50 / @100: {lists}"
    if cold := metrics.get("cold_items"):
        yield (
            f"evaluate: new items ({cold['items']} first met in the test period, "
            f"{cold['positives']} test positives), ranked among themselves: "
            f"recall@10 {cold['recall@10']:.4f}, "
            f"recall@50 {cold['recall@50']:.4f} (at random {cold['random@50']:.4f})"
        )
    for kind, tasks in metrics["ranking"].items():
        aucs = ", ".join(f"{t} AUC {m['auc']:.4f}" for t, m in tasks.items() if "auc" in m)
        ranked, alone = metrics["ranked"][kind], metrics["ranker_only"][kind]
        yield (
            f"evaluate: {kind}: {aucs}; ranked ndcg@10 {ranked['ndcg@10']:.4f} "
            f"(retrieval weight {ranked['retrieval_weight']:g}; ranker alone {alone['ndcg@10']:.4f})"
        )
    if "oracle" in metrics:
        yield f"evaluate: oracle {metrics['oracle']}"
    if sampled := metrics.get("sampled"):
        listed = ", ".join(
            f"{name} HR@10 {v['hitrate@10']:.4f} NDCG@10 {v['ndcg@10']:.4f}"
            for name, v in sampled.items() if name != "negatives"
        )  # fmt: skip
        yield f"evaluate: SAMPLED protocol (1 test item vs {sampled['negatives']} drawn): {listed}"
    if graded := metrics.get("graded_ndcg@10"):
        listed = ", ".join(f"{name} {v:.4f}" for name, v in graded.items())
        yield f"evaluate: graded ndcg@10 (the rating as the grade): {listed}"
    for name, v in metrics.get("list_value", {}).items():
        share = f" ({v['clicks_of_oracle']:.1%} of the oracle's)" if name != "oracle" else ""
        yield (
            f"evaluate: top-10 value, {name}: {v['clicks']:.3f} clicks, "
            f"{v['purchases']:.4f} purchases{share}"
        )
    for failure in metrics.get("failures", []):
        log.error("evaluation failure: %s", failure)
        yield f"evaluate: FAILED: {failure}"
    yield f"evaluate: wrote {bundle.path(Files.REPORT)}"


def publish_step(ctx: Context) -> Iterator[str]:
    bundle, tables = ctx.open_bundle(), ctx.tables()
    manifest = bundle.verify(
        required=(Files.RECALL, Files.HOT, Files.INDEX, Files.TWO_TOWER + ".json")
    )
    recall = pl.read_parquet(bundle.path(Files.RECALL))
    hot = pl.read_parquet(bundle.path(Files.HOT))
    client = connect(ctx.redis_url, ctx.redis_cluster, socket_timeout=30)
    try:
        stats = publish(
            client,
            Keys(ctx.key_prefix),
            bundle.version,
            tables.users.ids[recall["user_idx"].to_numpy()].tolist(),
            np.asarray(recall["items"].to_list(), dtype=np.int64).reshape(recall.height, -1),
            tables.items.ids,
            hot["item_idx"].to_numpy(),
            hot["hot_score"].to_numpy(),
            {
                "dataset": manifest["dataset"],
                "created_at": manifest["created_at"],
                "items": len(tables.items) - 1,
                "models": ",".join(["two_tower", *manifest.get("serving", {}).get("rankers", [])]),
            },
            ctx.config.publish,
        )
    finally:
        client.close()
    bundle.update_manifest(published={**stats, "at": time.time()})
    yield f"publish: version {bundle.version} is active at {masked(ctx.redis_url)} ({stats['users']} users in {stats['seconds']:.1f} s)"


STEP_FUNCTIONS: dict[str, Callable[[Context], Iterator[str]]] = {
    "etl": etl_step,
    "train-retrieval": train_retrieval_step,
    "train-ranking": train_ranking_step,
    "index": index_step,
    "export": export_step,
    "evaluate": evaluate_step,
    "refit": refit_step,
    "publish": publish_step,
}
STEPS = (*STEP_FUNCTIONS, "run")


FIRST_STEPS = ("etl", "train-retrieval", "train-ranking", "index", "export", "publish")


FIRST_EXAMPLES = 200_000  # a first version's models see this many examples each


def first_config(config: PipelineConfig, ranker: str) -> PipelineConfig:
    """A first version's config: the two-tower and the served ``ranker``, trained briefly
    (one pass over at most :data:`FIRST_EXAMPLES` examples)."""

    def brief(section: Any, **update: Any) -> Any:
        trainer = section.trainer.model_copy(update={"epochs": 1, "max_examples": FIRST_EXAMPLES})
        return section.model_copy(update={"trainer": trainer, **update})

    return config.model_copy(
        update={
            "retrieval": brief(config.retrieval),
            "ranking": brief(config.ranking, models=(ranker,)),
        }
    )


def run_step(step: str, ctx: Context, first: str | None = None) -> Iterator[str]:
    """Run ``step`` (``run``: every step in order).

    Args:
        first (str | None): with ``run``, the ranker the gateway serves: publish a
            briefly trained first version with it at once (:data:`FIRST_STEPS` under
            :func:`first_config`), then run everything as the version that replaces
            it. Something serves within minutes of a cold start, and the served
            quality is the full run's once it is done.
    """
    if step == "run" and first:
        brief = replace(ctx, config=first_config(ctx.config, first), bundle=None, cache={})
        for line in _steps(FIRST_STEPS, brief):
            yield f"first version: {line}"
    yield from _steps(list(STEP_FUNCTIONS) if step == "run" else [step], ctx)


def _steps(names: Sequence[str], ctx: Context) -> Iterator[str]:
    """Each step in turn; the manifest records the config it ran with, its seconds and
    the process's peak resident memory during it."""
    config = ctx.config.model_dump(mode="json")
    for name in names:
        _reset_peak_rss()
        started = time.perf_counter()
        yield from STEP_FUNCTIONS[name](ctx)
        seconds, peak = time.perf_counter() - started, _peak_rss_mib()
        log.info("%s: %.1f s, peak RSS %.0f MiB", name, seconds, peak)
        if ctx.bundle is not None and distributed()[0] == 0:
            sections = {k: config[k] for k in STEP_SECTIONS[name]}
            ctx.bundle.update_manifest(
                steps={
                    name: {"config": sections, "at": time.time(), "seconds": round(seconds, 2),
                           "peak_rss_mib": round(peak)}
                }
            )  # fmt: skip


def _reset_peak_rss() -> None:
    """Start this process's peak RSS afresh (Linux; elsewhere it keeps the lifetime peak)."""
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")


def _peak_rss_mib() -> float:
    """This process's peak resident memory since :func:`_reset_peak_rss`, in MiB."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
