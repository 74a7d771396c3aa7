"""Models of ``shared.models``: shapes, gradients, layer algebra, towers, checkpoints."""

from __future__ import annotations

import json

import pytest
import torch
from pydantic import ValidationError

from offline.training.losses import multitask_loss
from shared.errors import BundleError, ConfigError
from shared.models.checkpoint import checkpoint_paths, load_model, save_model
from shared.models.inputs import ItemInputs, RankerInputs, UserInputs
from shared.models.layers import (
    CrossNet,
    FactorizationMachine,
    FeatureEmbedding,
    GatedFusion,
    LowRankCrossNet,
    ResidualMLP,
)
from shared.models.rankers import (
    DCNConfig,
    Ranker,
    RankerConfig,
    TaskHead,
    build_ranker,
    chain_probabilities,
    final_score,
)
from shared.models.towers import TowerConfig, TwoTower, UserTower

V, B, L, H = 50, 6, 3, 4
TASKS = (
    TaskHead(name="click"),
    TaskHead(name="cart", parent="click"),
    TaskHead(name="purchase", parent="cart"),
    TaskHead(name="rating", kind="regression"),
)
RANKER_VARIANTS = [
    ("deepfm", DCNConfig()),
    ("dcn", DCNConfig(cross_layers=2, structure="parallel")),
    ("dcn", DCNConfig(cross_layers=2, structure="stacked")),
    ("dcn", DCNConfig(cross_layers=2, low_rank=3, structure="parallel")),
]
RANKER_IDS = ["deepfm", "dcn-parallel", "dcn-stacked", "dcn-low-rank"]
WIDTHS = [(3, 2, 2), (3, 0, 0), (0, 1, 0), (1, 0, 2)]  # (n_cat, n_multi, n_dense)


def ranker_config(n_cat: int = 3, n_multi: int = 2, n_dense: int = 2, **kw: object) -> RankerConfig:
    return RankerConfig(
        vocab_size=V,
        n_cat=n_cat,
        n_multi=n_multi,
        n_dense=n_dense,
        embed_dim=4,
        hidden=(8, 6),
        tasks=TASKS,
        **kw,
    )


def multi_slots(b: int, m: int) -> torch.Tensor:
    if m == 0:
        return torch.zeros(b, 0, 1, dtype=torch.long)
    slots = torch.randint(1, V, (b, m, L))
    slots[0, :, 1:] = 0  # some padding
    slots[1, 0, :] = 0  # an empty bag
    return slots


def ranker_inputs(n_cat: int = 3, n_multi: int = 2, n_dense: int = 2) -> RankerInputs:
    return RankerInputs(
        torch.randint(1, V, (B, n_cat)), multi_slots(B, n_multi), torch.randn(B, n_dense)
    )


def assert_all_grads(model: torch.nn.Module) -> None:
    for name, p in model.named_parameters():
        assert p.grad is not None, f"{name} got no gradient"
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, f"{name} got a zero gradient"


# ---------------------------------------------------------------- layers


def test_feature_embedding_pools_multi_hot_over_non_padding_and_projects_dense() -> None:
    emb = FeatureEmbedding(V, 4, n_cat=2, n_multi=1, n_dense=2)
    cat = torch.tensor([[3, 4]])
    multi = torch.tensor([[[5, 0, 7]]])
    dense = torch.tensor([[0.5, -2.0]])
    out = emb(cat, multi, dense)  # (1, 5, 4)
    table = emb.embedding.weight
    assert out.shape == (1, 5, 4)
    torch.testing.assert_close(out[0, :2], table[[3, 4]])
    torch.testing.assert_close(out[0, 2], (table[5] + table[7]) / 2)
    torch.testing.assert_close(out[0, 3:], dense[0, :, None] * emb.dense_weight + emb.dense_bias)
    empty = emb(cat, torch.zeros(1, 1, 3, dtype=torch.long), dense)[0, 2]
    assert torch.equal(empty, torch.zeros(4))


def test_vector_fields_are_projected_in_their_place_among_the_numbers() -> None:
    # dense fields: a number, a 3-vector, a number, a 2-vector (7 columns)
    emb = FeatureEmbedding(V, 4, n_cat=1, n_multi=0, n_dense=4, dense_widths=[1, 3, 1, 2])
    cat, multi = torch.tensor([[3], [4]]), torch.zeros(2, 0, 1, dtype=torch.long)
    dense = torch.randn(2, 7, requires_grad=True)
    out = emb(cat, multi, dense)  # (2, 5, 4)
    assert out.shape == (2, 5, 4)
    scalars = dense[:, [0, 4]]
    torch.testing.assert_close(
        out[:, [1, 3]], scalars[..., None] * emb.dense_weight + emb.dense_bias
    )
    torch.testing.assert_close(out[:, 2], emb.vector_proj[0](dense[:, 1:4]))
    torch.testing.assert_close(out[:, 4], emb.vector_proj[1](dense[:, 5:7]))
    out.sum().backward()  # every part trains
    assert all(p.grad is not None for p in emb.parameters() if p.requires_grad)
    with pytest.raises(ValueError, match="dense_widths"):
        FeatureEmbedding(V, 4, n_cat=1, n_multi=0, n_dense=2, dense_widths=[1, 3, 1])
    with pytest.raises(ValueError, match="expected 1 categorical"):
        emb(cat, multi, dense[:, :6])


def test_pooling_decay_weights_the_first_slots_most() -> None:
    emb = FeatureEmbedding(V, 4, n_cat=0, n_multi=2, n_dense=0, multi_decay=[1.0, 0.5])
    multi = torch.tensor([[[5, 6, 7], [5, 6, 0]]])
    out = emb(torch.zeros(1, 0, dtype=torch.long), multi, torch.zeros(1, 0))  # (1, 2, 4)
    t = emb.embedding.weight
    torch.testing.assert_close(out[0, 0], (t[5] + t[6] + t[7]) / 3)  # decay 1: the plain mean
    torch.testing.assert_close(out[0, 1], (t[5] + 0.5 * t[6]) / 1.5)  # padding weighs nothing
    torch.testing.assert_close(emb.pool(multi[0], 0.5)[0], (t[5] + 0.5 * t[6] + 0.25 * t[7]) / 1.75)
    with pytest.raises(ValueError, match="multi_decay"):
        FeatureEmbedding(V, 4, n_cat=0, n_multi=2, n_dense=0, multi_decay=[0.0, 1.0])


def test_feature_embedding_rejects_wrong_widths() -> None:
    emb = FeatureEmbedding(V, 4, n_cat=2, n_multi=0, n_dense=1)
    with pytest.raises(ValueError, match="expected 2 categorical"):
        emb(
            torch.ones(1, 3, dtype=torch.long),
            torch.zeros(1, 0, 1, dtype=torch.long),
            torch.ones(1, 1),
        )


def test_cross_layer_is_x0_times_affine_of_xl_plus_xl() -> None:
    net = CrossNet(5, num_layers=2)
    x0 = torch.randn(3, 5)
    w0, b0 = net.layers[0].weight, net.layers[0].bias
    w1, b1 = net.layers[1].weight, net.layers[1].bias
    x1 = x0 * (x0 @ w0.T + b0) + x0
    x2 = x0 * (x1 @ w1.T + b1) + x1
    torch.testing.assert_close(CrossNet(5, 0)(x0), x0)
    one = CrossNet(5, 1)
    one.layers[0].load_state_dict(net.layers[0].state_dict())
    torch.testing.assert_close(one(x0), x1)
    torch.testing.assert_close(net(x0), x2)


def test_low_rank_cross_equals_full_rank_with_w_equal_u_vt() -> None:
    low = LowRankCrossNet(6, num_layers=2, rank=2)
    full = CrossNet(6, num_layers=2)
    with torch.no_grad():
        for layer, down, up in zip(full.layers, low.down, low.up, strict=True):
            layer.weight.copy_(up.weight @ down.weight)  # W = U V^T, (6, 2) @ (2, 6)
            layer.bias.copy_(up.bias)
    x = torch.randn(4, 6)
    torch.testing.assert_close(low(x), full(x))


def test_fm_pairwise_term_equals_brute_force() -> None:
    v = torch.randn(3, 5, 4)  # (B, F, D)
    brute = torch.stack(
        [sum(v[b, i] @ v[b, j] for i in range(5) for j in range(i + 1, 5)) for b in range(3)]
    )
    torch.testing.assert_close(FactorizationMachine()(v).squeeze(1), brute)
    torch.testing.assert_close(FactorizationMachine(reduce=False)(v).sum(1), brute)


def test_gate_saturated_open_returns_id_and_closed_returns_features() -> None:
    fusion = GatedFusion(4)
    id_emb, feat = torch.randn(3, 4), torch.randn(3, 4)
    with torch.no_grad():
        fusion.gate.weight.zero_()
        fusion.gate.bias.fill_(1e4)
    assert torch.equal(fusion(id_emb, feat), id_emb)
    with torch.no_grad():
        fusion.gate.bias.fill_(-1e4)
    assert torch.equal(fusion(id_emb, feat), feat)


# ---------------------------------------------------------------- rankers


@pytest.mark.parametrize("widths", WIDTHS, ids=lambda w: "cat{}-multi{}-dense{}".format(*w))
@pytest.mark.parametrize("kind,dcn", RANKER_VARIANTS, ids=RANKER_IDS)
def test_ranker_shapes_and_gradients(
    kind: str, dcn: DCNConfig, widths: tuple[int, int, int]
) -> None:
    torch.manual_seed(0)
    model = build_ranker(kind, ranker_config(*widths, dcn=dcn))
    inputs = ranker_inputs(*widths)
    out = model(inputs)
    assert list(out) == [t.name for t in TASKS]
    assert all(y.shape == (B,) for y in out.values())
    sum(y.square().sum() for y in out.values()).backward()
    # The embedding table's padding row never gets a gradient; every other parameter does.
    assert_all_grads(model)


@pytest.mark.parametrize("kind,dcn", RANKER_VARIANTS, ids=RANKER_IDS)
def test_ranker_learns_a_tiny_task_in_a_few_steps(kind: str, dcn: DCNConfig) -> None:
    torch.manual_seed(0)
    config = ranker_config(dcn=dcn)
    model = build_ranker(kind, config)
    inputs = ranker_inputs()
    labels = {
        "click": (inputs.cat[:, 0] % 2).float(),  # depends on the first field's slot
        "cart": torch.ones(B),
        "purchase": torch.zeros(B),
        "rating": inputs.dense[:, 0],
    }
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(30):
        total, _ = multitask_loss(model(inputs), labels, config.tasks)
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
        losses.append(total.item())
    assert losses[-1] < 0.5 * losses[0]


@pytest.mark.parametrize(
    "options",
    [
        {"dcn": DCNConfig(cross_layers=2, layer_norm=True)},
        {"dcn": DCNConfig(cross_layers=2, stochastic_depth=0.5)},
        {"deep_block": "residual"},
        {"head_hidden": (4,), "head_batch_norm": True, "head_dropout": 0.1},
        {"dropout": (0.0, 0.2), "batch_norm": True},
    ],
    ids=["cross-layer-norm", "stochastic-depth", "residual-deep", "task-heads", "layer-dropout"],
)
def test_every_architecture_variant_trains_and_gets_gradients(options: dict) -> None:
    torch.manual_seed(0)
    config = ranker_config(**options)
    model = build_ranker("dcn", config)
    inputs = ranker_inputs()
    labels = {"click": (inputs.cat[:, 0] % 2).float(), "cart": torch.ones(B),
              "purchase": torch.zeros(B), "rating": inputs.dense[:, 0]}  # fmt: skip
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    losses = []
    for step in range(40):
        total, _ = multitask_loss(model(inputs), labels, config.tasks)
        optimizer.zero_grad()
        total.backward()
        if step == 0:
            assert_all_grads(model)
        optimizer.step()
        losses.append(total.item())
    assert losses[-1] < 0.5 * losses[0]


def test_stochastic_depth_drops_cross_updates_in_training_only() -> None:
    torch.manual_seed(0)
    cross = CrossNet(6, 2, stochastic_depth=0.5)
    x = torch.randn(256, 6)
    with torch.no_grad():
        cross.eval()
        assert torch.equal(cross(x), cross(x))  # every layer, every time
        cross.train()
        dropped = (cross(x) == x).all(dim=1).float().mean().item()
    assert 0.15 < dropped < 0.35  # both layers skipped: p² = 0.25 of the rows


def test_residual_blocks_skip_by_identity_or_projection() -> None:
    mlp = ResidualMLP(6, (6, 4))
    assert isinstance(mlp.skips[0], torch.nn.Identity)
    assert isinstance(mlp.skips[1], torch.nn.Linear) and mlp.skips[1].bias is None
    assert mlp(torch.randn(3, 6)).shape == (3, 4)
    with pytest.raises(ValueError, match="dropout needs"):
        ResidualMLP(6, (6, 4), dropout=(0.1,))


def test_chained_probabilities_are_products_of_sigmoids_and_score_weights_them() -> None:
    model = build_ranker("dcn", ranker_config())
    inputs = ranker_inputs()
    out, probs = model(inputs), model.probabilities(inputs)
    s = {k: torch.sigmoid(v) for k, v in out.items()}
    torch.testing.assert_close(probs["click"], s["click"])
    torch.testing.assert_close(probs["cart"], s["click"] * s["cart"])
    torch.testing.assert_close(probs["purchase"], s["click"] * s["cart"] * s["purchase"])
    torch.testing.assert_close(probs["rating"], out["rating"])
    score = model.score(inputs, {"click": 1.0, "purchase": 3.0})
    torch.testing.assert_close(score, probs["click"] + 3.0 * probs["purchase"])
    with pytest.raises(ConfigError, match="unknown tasks"):
        model.score(inputs, {"like": 1.0})
    assert chain_probabilities(out, TASKS).keys() == probs.keys()


def test_final_score_is_the_ranker_score_or_a_product_of_experts() -> None:
    score, logit = torch.tensor([0.2, 0.5, 0.1]), torch.tensor([1.0, -2.0, 3.0])
    assert torch.equal(final_score(score, logit, 0.0), score)
    assert torch.equal(final_score(score, None, 0.0), score)
    torch.testing.assert_close(final_score(score, logit, 0.5), torch.log(score) + 0.5 * logit)
    # the blend can reorder: item 2 has the lowest ranker score and the best logit
    assert final_score(score, logit, 0.5).argmax() == 2 and score.argmax() == 1
    with pytest.raises(ValueError, match="retrieval logits"):
        final_score(score, None, 0.5)


@pytest.mark.parametrize(
    "change,message",
    [
        ({"tasks": (TaskHead(name="cart", parent="click"),)}, "not an earlier task"),
        ({"tasks": (TaskHead(name="a"), TaskHead(name="a"))}, "appears twice"),
        (
            {"tasks": (TaskHead(name="r", kind="regression"), TaskHead(name="c", parent="r"))},
            "not binary",
        ),
        ({"n_cat": 0, "n_multi": 0, "n_dense": 0}, "at least one feature"),
        ({"hiddne": (8,)}, "Extra inputs"),
        ({"dcn": {"structure": "sideways"}}, "stacked"),
    ],
)
def test_ranker_config_rejects_bad_values(change: dict[str, object], message: str) -> None:
    data = ranker_config().model_dump() | change
    with pytest.raises(ValidationError, match=message):
        RankerConfig.model_validate(data)


def test_build_ranker_rejects_unknown_kind() -> None:
    with pytest.raises(ConfigError, match="unknown ranker"):
        build_ranker("wide-deep", ranker_config())


# ---------------------------------------------------------------- towers


def tower_config(
    user: tuple[int, int, int] = (2, 1, 2), item: tuple[int, int, int] = (1, 2, 1), **kw: object
) -> TowerConfig:
    return TowerConfig(
        **kw,
        vocab_size=V,
        n_user_cat=user[0],
        n_user_multi=user[1],
        n_user_dense=user[2],
        n_item_cat=item[0],
        n_item_multi=item[1],
        n_item_dense=item[2],
        embed_dim=4,
        out_dim=5,
        hidden=(8,),
    )


def user_inputs(widths: tuple[int, int, int] = (2, 1, 2)) -> UserInputs:
    history = torch.randint(1, V, (B, H))
    history[0] = 0  # no history yet
    cat, multi, dense = ranker_inputs(*widths)
    return UserInputs(torch.randint(1, V, (B,)), cat, multi, dense, history)


def item_inputs(widths: tuple[int, int, int] = (1, 2, 1)) -> ItemInputs:
    return ItemInputs(torch.randint(1, V, (B,)), *ranker_inputs(*widths))


@pytest.mark.parametrize("encoder", ["mean", "transformer"])
@pytest.mark.parametrize(
    "user,item", [((2, 1, 2), (1, 2, 1)), ((0, 0, 0), (0, 0, 0)), ((1, 0, 0), (0, 0, 1))]
)
def test_two_tower_shapes_norms_and_gradients(
    user: tuple[int, int, int], item: tuple[int, int, int], encoder: str
) -> None:
    torch.manual_seed(0)
    config = tower_config(
        user, item, user_encoder=encoder, history_length=H, encoder_heads=2, encoder_layers=1
    )
    model = TwoTower(config)
    u_in, i_in = user_inputs(user), item_inputs(item)
    u, v = model.user_embed(u_in), model.item_embed(i_in)
    assert u.shape == v.shape == (B, 5)
    torch.testing.assert_close(u.norm(dim=1), torch.ones(B))
    logits = model(u_in, i_in)
    assert logits.shape == (B,)
    torch.testing.assert_close(logits, (u * v).sum(1) / 0.05)
    (logits.square().sum() + (u @ v.T).sum()).backward()
    assert_all_grads(model)


@pytest.mark.parametrize("fusion", ["gate", "sum", "concat", "id", "features"])
def test_every_fusion_mode_trains_and_reads_what_it_says(fusion: str) -> None:
    torch.manual_seed(0)
    model = TwoTower(tower_config(fusion=fusion))
    u_in, i_in = user_inputs(), item_inputs()
    logits = model(u_in, i_in)
    assert logits.shape == (B,) and torch.isfinite(logits).all()
    logits.square().sum().backward()
    if fusion != "id":  # the id mode leaves the feature fields unread
        assert_all_grads(model)
    other_ids = i_in._replace(id=torch.randint(1, V, (B,)))
    other_features = i_in._replace(cat=torch.randint(1, V, i_in.cat.shape))
    with torch.no_grad():
        v = model.item_embed(i_in)
        ids_matter = not torch.allclose(model.item_embed(other_ids), v)
        features_matter = not torch.allclose(model.item_embed(other_features), v)
    assert ids_matter == (fusion != "features")
    assert features_matter == (fusion != "id")


def test_dot_similarity_keeps_the_norms_and_batch_norm_sits_in_the_towers() -> None:
    torch.manual_seed(0)
    model = TwoTower(tower_config(similarity="dot", batch_norm=True))
    u_in, i_in = user_inputs(), item_inputs()
    u, v = model.user_embed(u_in), model.item_embed(i_in)
    assert not torch.allclose(u.norm(dim=1), torch.ones(B))
    torch.testing.assert_close(model(u_in, i_in), (u * v).sum(1) / 0.05)
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm1d)]
    assert norms and model.user_tower.config.similarity == "dot"


def test_each_tower_can_have_its_own_hidden_sizes() -> None:
    model = TwoTower(tower_config(user_hidden=(16, 12), item_hidden=(6,)))
    u_in, i_in = user_inputs(), item_inputs()
    assert model.user_embed(u_in).shape == model.item_embed(i_in).shape == (B, 5)
    widths = lambda m: [x.out_features for x in m.modules() if isinstance(x, torch.nn.Linear)]  # noqa: E731
    assert widths(model.user_tower.over_arch)[:2] == [16, 12]
    assert widths(model.item_tower.over_arch)[0] == 6


def test_serving_vectors_add_the_popularity_prior_to_the_logit() -> None:
    torch.manual_seed(0)
    model = TwoTower(tower_config()).eval()
    u_in, i_in = user_inputs(), item_inputs()
    log_q = -torch.rand(V) * 8  # log shares of the item slots
    model.set_popularity_prior(log_q, 0.3)
    assert model.config.popularity_prior == model.user_tower.config.popularity_prior == 0.3
    u, v = model.user_tower.vector(u_in), model.item_tower.vector(i_in)
    assert u.shape == v.shape == (B, model.config.vector_dim) == (B, 6)
    # u'·v'/τ = u·v/τ + β·log q_i; training's logit stays the cosine alone
    want = model(u_in, i_in) + 0.3 * log_q[i_in.id]
    torch.testing.assert_close((u * v).sum(1) / 0.05, want)
    torch.testing.assert_close(
        model(u_in, i_in), (model.user_embed(u_in) * model.item_embed(i_in)).sum(1) / 0.05
    )


def test_sequence_encoder_reads_order_and_gives_no_history_zero() -> None:
    torch.manual_seed(0)
    tower = TwoTower(tower_config(user_encoder="transformer", history_length=H)).user_tower
    tower.eval()
    slots = torch.randint(1, V, (3, H))
    slots[1] = 0  # no history
    slots[2] = slots[0].flip(0)  # the same items, another order
    with torch.no_grad():
        out = tower.history(slots)
    assert out.shape == (3, 4) and torch.isfinite(out).all()
    assert (out[1] == 0).all()
    assert not torch.allclose(out[0], out[2])  # positions matter, unlike a plain mean


def test_towers_share_item_id_embeddings_with_user_history() -> None:
    model = TwoTower(tower_config())
    assert model.user_tower.embedding is model.item_tower.embedding
    u_in = user_inputs()
    before = model.user_embed(u_in)
    with torch.no_grad():  # move the embedding of an item in user 1's history only
        model.item_tower.embedding.weight[u_in.history[1, 0]] += 1.0
    after = model.user_embed(u_in)
    assert not torch.allclose(before[1], after[1])


def test_user_tower_gate_saturated_open_uses_the_id_embedding() -> None:
    tower = UserTower(tower_config())
    inputs = user_inputs()
    with torch.no_grad():
        tower.fusion.gate.weight.zero_()
        tower.fusion.gate.bias.fill_(float("inf"))
    assert torch.equal(tower.fused(inputs), tower.embedding(inputs.id))


# ---------------------------------------------------------------- checkpoints


@pytest.mark.parametrize("kind,dcn", RANKER_VARIANTS[:2], ids=RANKER_IDS[:2])
def test_ranker_checkpoint_round_trip_is_exact(tmp_path, kind: str, dcn: DCNConfig) -> None:
    config = ranker_config(dcn=dcn)
    model = build_ranker(kind, config).eval()
    weights, meta = save_model(model, config, tmp_path / "ranker.v1")
    assert (weights.name, meta.name) == ("ranker.v1.safetensors", "ranker.v1.json")
    loaded = load_model(tmp_path / "ranker.v1")
    assert isinstance(loaded, Ranker) and type(loaded) is type(model) and loaded.config == config
    inputs = ranker_inputs()
    for name, y in model(inputs).items():
        assert torch.equal(loaded(inputs)[name], y)


def test_two_tower_round_trip_and_user_tower_alone(tmp_path) -> None:
    config = tower_config()
    model = TwoTower(config).eval()
    save_model(model, config, tmp_path / "towers")
    save_model(model.user_tower, config, tmp_path / "user_tower")
    loaded = load_model(tmp_path / "towers")
    user_only = load_model(tmp_path / "user_tower")
    assert isinstance(user_only, UserTower)
    assert loaded.user_tower.embedding is loaded.item_tower.embedding
    u_in, i_in = user_inputs(), item_inputs()
    assert torch.equal(loaded(u_in, i_in), model(u_in, i_in))
    assert torch.equal(user_only(u_in), model.user_embed(u_in))


def test_two_tower_round_trip_keeps_the_popularity_prior(tmp_path) -> None:
    model = TwoTower(tower_config()).eval()
    model.set_popularity_prior(-torch.rand(V), 0.5)
    save_model(model, model.config, tmp_path / "towers")
    loaded = load_model(tmp_path / "towers")
    assert loaded.config.popularity_prior == 0.5
    i_in = item_inputs()
    assert torch.equal(loaded.item_tower.vector(i_in), model.item_tower.vector(i_in))


def test_save_model_rejects_a_config_that_is_not_the_models(tmp_path) -> None:
    with pytest.raises(ValueError, match="not the one"):
        save_model(build_ranker("dcn", ranker_config()), ranker_config(n_dense=1), tmp_path / "m")


def test_load_model_errors_are_bundle_errors(tmp_path) -> None:
    config = ranker_config()
    save_model(build_ranker("deepfm", config), config, tmp_path / "m")
    weights, meta = checkpoint_paths(tmp_path / "m")
    description = json.loads(meta.read_text())

    with pytest.raises(BundleError, match="model file not found"):
        load_model(tmp_path / "absent")

    meta.write_text(json.dumps(description | {"config": description["config"] | {"embed_dim": 8}}))
    with pytest.raises(BundleError, match="do not fit"):
        load_model(tmp_path / "m")

    meta.write_text(json.dumps(description | {"config": description["config"] | {"colour": 1}}))
    with pytest.raises(BundleError, match="invalid deepfm config: colour"):
        load_model(tmp_path / "m")

    meta.write_text(json.dumps(description | {"kind": "gbdt"}))
    with pytest.raises(BundleError, match="unknown model kind"):
        load_model(tmp_path / "m")

    meta.write_text("{not json")
    with pytest.raises(BundleError, match="not a model description"):
        load_model(tmp_path / "m")

    meta.write_text(json.dumps(description))
    weights.write_bytes(weights.read_bytes()[:100])  # truncated
    with pytest.raises(BundleError, match="do not fit"):
        load_model(tmp_path / "m")

    weights.unlink()
    with pytest.raises(BundleError, match="m.safetensors: model file not found"):
        load_model(tmp_path / "m")
