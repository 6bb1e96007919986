"""FedAvg, FedProx and FedGen: the aggregation math, the proximal term, the generator step, and that each learns."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from qkt.baselines import FEDERATED, train_global
from qkt.baselines.fedavg import FedAvg, average_states, round_epochs
from qkt.baselines.fedgen import Generator, diversity_loss, generator_step, label_weights
from qkt.baselines.fedprox import FedProx, proximal_loss, proximal_term
from qkt.config import FederatedConfig, TrainingConfig, parse_config
from qkt.data import load_dataset
from qkt.models import build_model
from qkt.partition import dirichlet
from qkt.training import cross_entropy_loss, per_class_accuracy


def test_average_states_is_the_sample_weighted_mean():
    a = {"w": torch.tensor([1.0, 2.0]), "n": torch.tensor(3)}
    b = {"w": torch.tensor([3.0, 6.0]), "n": torch.tensor(5)}
    out = average_states([a, b], [1, 3])
    assert torch.allclose(out["w"], torch.tensor([2.5, 5.0]))
    assert out["n"].item() == 5 and out["n"].dtype == a["n"].dtype  # counters are not averaged


def test_one_round_of_fedavg_equals_the_weighted_average_of_the_local_models():
    # With one round, FedAvg's global model must be exactly the size-weighted mean of the parties' local fits.
    torch.manual_seed(0)
    x, y = torch.randn(60, 4), torch.randint(0, 3, (60,))
    parties = [(x[:10], y[:10]), (x[10:], y[10:])]
    training = TrainingConfig(epochs=1, batch_size=8)
    seen = []

    class Recording(FedAvg):
        def after_round(self, global_model, local_models, round_):
            seen.append([m.state_dict() for m in local_models])

    result = Recording(FederatedConfig(), training).fit(lambda: nn.Linear(4, 3), parties, progress=False)
    expected = average_states(seen[0], [10, 50])
    for key, value in result.model.state_dict().items():
        assert torch.allclose(value, expected[key])
    assert result.rounds == 1
    assert result.bytes_sent == result.bytes_received == 4 * (12 + 3)


def test_rounds_spend_the_parties_local_epoch_budget():
    assert FedAvg(FederatedConfig(local_epochs=2), TrainingConfig(epochs=5)).rounds == 3
    assert [round_epochs(5, 2, r) for r in range(3)] == [2, 2, 1]  # the same rule in-process and over Flower


def test_proximal_term_and_its_gradient():
    model = nn.Linear(2, 1)
    anchor = [p.detach().clone() for p in model.parameters()]
    assert proximal_term(model, anchor).item() == 0.0
    with torch.no_grad():
        model.weight += 1.0
    term = proximal_term(model, anchor)
    assert term.item() == pytest.approx(0.5 * 2)  # two weights, each 1 away
    term.backward()
    assert torch.allclose(model.weight.grad, torch.ones_like(model.weight))  # d/dw ½||w - a||² = w - a


def test_fedprox_loss_is_cross_entropy_at_the_global_weights_and_grows_away_from_them():
    torch.manual_seed(0)
    model = build_model("mlp", (64,), 10)
    batch = (torch.randn(16, 64), torch.randint(0, 10, (16,)))
    anchor = [p.detach().clone() for p in model.parameters()]
    loss = proximal_loss(anchor, mu=0.5)
    assert torch.isclose(loss(model, batch), cross_entropy_loss(model, batch))
    with torch.no_grad():
        next(model.parameters()).add_(1.0)
    assert loss(model, batch) > cross_entropy_loss(model, batch)


def test_fedprox_with_large_mu_stays_near_the_global_model():
    torch.manual_seed(0)
    x, y = torch.randn(64, 4), torch.randint(0, 2, (64,))
    training = TrainingConfig(epochs=1, lr=0.05, batch_size=16)
    start = nn.Linear(4, 2)
    drift = {}
    for mu in (0.0, 100.0):
        algo = FedProx(FederatedConfig(prox_mu=mu), training)
        result = algo.fit(lambda: _copy(start), [(x, y)], progress=False)
        drift[mu] = sum((p - q).abs().sum().item() for p, q in zip(result.model.parameters(), start.parameters(), strict=True))
    assert drift[100.0] < 0.5 * drift[0.0]


def _copy(model: nn.Module) -> nn.Module:
    clone = nn.Linear(model.in_features, model.out_features)
    clone.load_state_dict(model.state_dict())
    return clone


def test_label_weights_share_each_class_among_its_holders():
    parties = [(None, torch.tensor([0, 0, 1])), (None, torch.tensor([0, 2]))]
    w = label_weights(parties, 4)
    assert torch.allclose(w[:, 0], torch.tensor([2 / 3, 1 / 3]))
    assert torch.allclose(w[:, 1], torch.tensor([1.0, 0.0]))
    assert torch.all(w[:, 3] == 0)  # nobody holds class 3


def test_diversity_loss_is_lower_for_diverse_features():
    noise = torch.rand(16, 8)
    collapsed = torch.zeros(16, 5)
    diverse = torch.randn(16, 5)
    assert diversity_loss(noise, diverse) < diversity_loss(noise, collapsed) == 1.0


def test_generator_steps_make_features_the_heads_classify_as_their_label():
    # Two parties' heads, each trusted on the classes it holds: the generator must learn to fool both as labelled.
    torch.manual_seed(0)
    heads = [nn.Linear(6, 3), nn.Linear(6, 3)]
    with torch.no_grad():
        for h in heads:
            h.weight.copy_(torch.eye(3, 6) * 3)
            h.bias.zero_()
    weights = label_weights([(None, torch.tensor([0, 1])), (None, torch.tensor([1, 2]))], 3)
    generator = Generator(3, 6, noise_dim=4, hidden=32)
    optimizer = torch.optim.Adam(generator.parameters(), lr=1e-2)
    rng = torch.Generator().manual_seed(0)
    labels = torch.arange(3)
    first = generator_step(generator, optimizer, heads, weights, labels, 32, 1.0, rng)
    for _ in range(150):
        last = generator_step(generator, optimizer, heads, weights, labels, 32, 1.0, rng)
    assert last < first
    generator.eval()
    y = torch.arange(3).repeat(10)
    features, _ = generator(y, rng)
    assert (heads[0](features).argmax(1) == y).float().mean() > 0.9


@pytest.mark.parametrize("method", sorted(FEDERATED))
def test_each_federated_baseline_learns_classes_a_party_lacks(method):
    # Label-skewed digits: the global model must classify well overall, including classes party 0 never saw.
    data = load_dataset("digits")
    x, y, xt, yt = data.normalized()
    parts = dirichlet(data.y_train, 5, 0.1, seed=0)
    config = parse_config({"training": {"arch": "mlp", "epochs": 6}})
    result = train_global(method, config, data.input_shape, data.num_classes, x, y, parts, progress=False)
    acc = per_class_accuracy(result.model, xt, yt, data.num_classes)
    lacking = np.flatnonzero(np.bincount(data.y_train[parts[0]], minlength=10) == 0)
    assert np.nanmean(acc) > 0.7
    assert len(lacking) == 0 or np.mean(acc[lacking]) > 0.5
    assert result.seconds > 0 and result.bytes_received >= result.bytes_sent > 0
