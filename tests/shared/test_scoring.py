"""``shared.models.scoring``: the ranker split at its field embeddings, and its ONNX export."""

from __future__ import annotations

import itertools

import numpy as np
import onnxruntime
import pytest
import torch

from shared.models.rankers import DCNConfig, RankerConfig, TaskHead, build_ranker
from shared.models.scoring import (
    ServingHead,
    UserVectors,
    export_head,
    export_onnx,
    onnx_difference,
    onnx_parity,
)
from shared.models.towers import TwoTower
from tests.shared.test_models import (
    RANKER_IDS,
    RANKER_VARIANTS,
    H,
    ranker_config,
    ranker_inputs,
    tower_config,
    user_inputs,
)

TASKS = (TaskHead(name="click"), TaskHead(name="buy", parent="click"))
SPLIT_VARIANTS = [
    (kind, hidden, batch_norm, DCNConfig(cross_layers=layers, low_rank=rank, structure=structure))
    for kind, hidden, batch_norm, layers, rank, structure in itertools.product(
        ["dcn", "deepfm"], [(8, 6), ()], [False, True], [0, 2], [None, 3], ["parallel", "stacked"]
    )
    if kind == "dcn" or (layers, rank, structure) == (0, None, "parallel")
]


def _trained_looking(ranker: torch.nn.Module) -> torch.nn.Module:
    """Random weights of a realistic size everywhere (BatchNorm statistics included)."""
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in ranker.parameters():
            p.copy_(torch.randn(p.shape, generator=generator) * 0.3)
        for b in ranker.buffers():
            if b.dtype.is_floating_point:
                b.copy_(torch.rand(b.shape, generator=generator) + 0.5)
    return ranker.eval()


@pytest.mark.parametrize(
    ("kind", "hidden", "batch_norm", "dcn"),
    SPLIT_VARIANTS,
    ids=[
        f"{k}-h{len(h)}-bn{int(bn)}-x{d.cross_layers}-r{d.low_rank}-{d.structure}"
        for k, h, bn, d in SPLIT_VARIANTS
    ],  # fmt: skip
)
def test_head_from_first_equals_the_head(
    kind: str, hidden: tuple[int, ...], batch_norm: bool, dcn: DCNConfig
) -> None:
    config = RankerConfig(
        vocab_size=50, n_cat=3, n_multi=1, n_dense=2, embed_dim=4, hidden=hidden,
        batch_norm=batch_norm, tasks=TASKS, dcn=dcn,
    )  # fmt: skip
    ranker = _trained_looking(build_ranker(kind, config))
    fields = torch.randn(7, config.n_fields, ranker.sparse_arch.embed_dim)
    with torch.no_grad():
        whole = ranker.head(fields)
        split = ranker.head_from_first(fields, fields.flatten(1) @ ranker.first_weight().T)
    for task in whole:
        torch.testing.assert_close(split[task], whole[task], atol=1e-5, rtol=1e-5)


ARCHITECTURES = {
    "cross-layer-norm": {"dcn": DCNConfig(cross_layers=2, layer_norm=True)},
    "cross-low-rank-norm-stochastic": {
        "dcn": DCNConfig(cross_layers=3, low_rank=3, layer_norm=True, stochastic_depth=0.3)
    },
    "residual-deep": {"deep_block": "residual"},  # widths 8 (projected skip), 6 (projected)
    "deep-task-heads": {"head_hidden": (5,), "head_batch_norm": True, "head_dropout": 0.1},
    "per-layer-dropout": {"dropout": (0.1, 0.3)},
}


@pytest.mark.parametrize("kind", ["dcn", "deepfm"])
@pytest.mark.parametrize("options", ARCHITECTURES.values(), ids=ARCHITECTURES.keys())
def test_every_architecture_variant_serves_split_and_in_onnx_as_a_whole(
    tmp_path, kind: str, options: dict
) -> None:  # noqa: ANN001
    ranker = _trained_looking(build_ranker(kind, ranker_config(**options)))
    fields = torch.randn(7, ranker.config.n_fields, ranker.sparse_arch.embed_dim)
    with torch.no_grad():
        whole = ranker.head(fields)
        split = ranker.head_from_first(fields, fields.flatten(1) @ ranker.first_weight().T)
    for task in whole:
        torch.testing.assert_close(split[task], whole[task], atol=1e-5, rtol=1e-5)
    head = ServingHead(ranker, {"click": 1.0}, 0.5)
    path = tmp_path / "head.onnx"
    export_head(head, ranker.config.n_fields, ranker.sparse_arch.embed_dim, path)
    assert onnx_parity(head, path, ranker.config.n_fields, ranker.sparse_arch.embed_dim) < 1e-5


def test_first_weight_is_linear_in_the_fields() -> None:
    """The per-side sums the gateway adds up are the full product."""
    ranker = _trained_looking(build_ranker("dcn", ranker_config()))
    w = ranker.first_weight()  # (P, F·W)
    fields = torch.randn(5, ranker.config.n_fields, ranker.sparse_arch.embed_dim)
    sides = [[0, 1], [2, 3, 4], [5, 6]]  # any partition of the fields
    parts = []
    for side in sides:
        masked = torch.zeros_like(fields)
        masked[:, side] = fields[:, side]
        parts.append(masked.flatten(1) @ w.T)
    torch.testing.assert_close(sum(parts), fields.flatten(1) @ w.T, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(("kind", "dcn"), RANKER_VARIANTS, ids=RANKER_IDS)
@pytest.mark.parametrize("retrieval_weight", [0.0, 0.7])
def test_onnx_export_matches_torch(
    tmp_path,
    kind: str,
    dcn: DCNConfig,
    retrieval_weight: float,  # noqa: ANN001
) -> None:
    ranker = _trained_looking(build_ranker(kind, ranker_config(dcn=dcn)))
    head = ServingHead(ranker, {"click": 1.0, "cart": 2.0, "purchase": 4.0}, retrieval_weight)
    width = ranker.sparse_arch.embed_dim
    path = tmp_path / "head.onnx"
    export_head(head, ranker.config.n_fields, width, path)
    assert onnx_parity(head, path, ranker.config.n_fields, width) < 1e-5
    # on the ranker's own field embeddings, at a batch size the export never saw
    x = ranker_inputs()
    with torch.no_grad():
        fields = ranker.sparse_arch(x.cat, x.multi, x.dense)
        first = fields.flatten(1) @ ranker.first_weight().T
        logit = torch.randn(len(fields))
        want = head(fields, first, logit)
        full = ranker.score_with_probabilities(x, head.weights)[0]
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feed = {"fields": fields.numpy(), "first": first.numpy(), "retrieval_logit": logit.numpy()}
    names = {i.name for i in session.get_inputs()}
    got = session.run(["score", "probs"], {k: v for k, v in feed.items() if k in names})
    np.testing.assert_allclose(got[0], want[0].numpy(), atol=1e-5)
    np.testing.assert_allclose(got[1], want[1].numpy(), atol=1e-6)
    if retrieval_weight == 0:  # the head scores as the whole ranker does
        np.testing.assert_allclose(got[0], full.numpy(), atol=1e-5)


def test_serving_head_refuses_unknown_score_weights() -> None:
    ranker = build_ranker("dcn", ranker_config())
    with pytest.raises(Exception, match="unknown tasks"):
        ServingHead(ranker, {"nope": 1.0}, 0.0)


@pytest.mark.parametrize("encoder", ["mean", "transformer"])
def test_user_tower_exports_to_onnx(tmp_path, encoder: str) -> None:  # noqa: ANN001
    torch.manual_seed(0)
    config = tower_config(user_encoder=encoder, history_length=H, encoder_layers=1)
    tower = UserVectors(TwoTower(config).user_tower.eval())
    path = tmp_path / "user_tower.onnx"
    example = tuple(user_inputs())
    export_onnx(tower, example, UserVectors.INPUTS, ("vector",), path)
    assert onnx_difference(tower, example, UserVectors.INPUTS, path) < 1e-5
