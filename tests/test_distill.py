"""Phase 1: experts speak only for their query classes, everything else is the querier's own, at a fine-tuning's cost."""

from __future__ import annotations

import numpy as np
import torch

from qkt import training
from qkt.config import QueryConfig
from qkt.models import build_model
from qkt.query import Lesson, Variant, learn, light, transfer
from qkt.query.transfer import TransferSet, combine_targets

N, C = 6, 5
QUERY = (1, 3)


def _probs(seed):
    return torch.softmax(torch.randn(N, C, generator=torch.Generator().manual_seed(seed)), dim=1)


def test_target_is_a_distribution_with_expert_mass_on_query_classes():
    own, expert = _probs(0), _probs(1)
    target = combine_targets(own, {"e": expert}, {"e": np.array([True, True])}, QUERY)
    assert torch.allclose(target.sum(1), torch.ones(N))
    assert torch.allclose(target[:, list(QUERY)], expert[:, list(QUERY)])
    rest = [0, 2, 4]
    # The other classes keep the querier's own proportions.
    assert torch.allclose(target[:, rest] / target[:, rest].sum(1, keepdim=True), own[:, rest] / own[:, rest].sum(1, keepdim=True))


def test_a_non_expert_teacher_changes_nothing():
    own, expert, bystander = _probs(0), _probs(1), _probs(2)
    masks = {"e": np.array([True, False])}
    alone = combine_targets(own, {"e": expert}, masks, QUERY)
    with_bystander = combine_targets(own, {"e": expert, "b": bystander}, {**masks, "b": np.array([False, False])}, QUERY)
    assert torch.equal(alone, with_bystander)


def test_non_query_outputs_of_an_expert_change_nothing():
    own, expert = _probs(0), _probs(1)
    masks = {"e": np.array([True, True])}
    edited = expert.clone()
    edited[:, [0, 2, 4]] = torch.rand(N, 3)  # rewrite what the expert says about classes outside Q
    assert torch.equal(combine_targets(own, {"e": expert}, masks, QUERY), combine_targets(own, {"e": edited}, masks, QUERY))


def test_expert_bits_are_per_class():
    own, e1, e2 = _probs(0), _probs(1), _probs(2)
    target = combine_targets(own, {"e1": e1, "e2": e2}, {"e1": np.array([True, False]), "e2": np.array([True, True])}, QUERY)
    assert torch.allclose(target[:, 1], (e1[:, 1] + e2[:, 1]) / 2)
    assert torch.allclose(target[:, 3], e2[:, 3])


def test_query_class_without_expert_keeps_own_probability():
    own, expert = _probs(0), _probs(1)
    target = combine_targets(own, {"e": expert}, {"e": np.array([True, False])}, QUERY)
    assert torch.allclose(target[:, 3], own[:, 3])


def test_balanced_weights_equalise_classes():
    targets = torch.eye(3)[[0, 0, 0, 1, 2, 2]]
    balanced = TransferSet(torch.zeros(6, 2), targets, torch.tensor([0, 0, 0, -1, -1, -1]), torch.ones(6)).balanced()
    per_class = [float(balanced.weights[i].sum()) for i in ([0, 1, 2], [3], [4, 5])]
    assert np.allclose(per_class, per_class[0])


def _counted_lesson(monkeypatch) -> tuple[torch.nn.Module, Lesson, list[int]]:
    """A student, a lesson with one expert, and the list each distillation batch appends its size to."""
    trained_on: list[int] = []
    loss = transfer.distillation_loss
    monkeypatch.setattr(transfer, "distillation_loss", lambda logits, *a, **k: trained_on.append(len(logits)) or loss(logits, *a, **k))
    torch.manual_seed(0)
    student, expert = build_model("mlp", (8,), C), build_model("mlp", (8,), C)
    local_x, local_y = torch.randn(100, 8), torch.randint(0, 3, (100,))
    return student, Lesson({"e": expert}, {"e": np.array([True, True])}, QUERY, local_x, local_y), trained_on


def test_a_phase1_epoch_costs_a_fine_tuning_epoch_however_wide_the_transfer_set(monkeypatch):
    student, lesson, trained_on = _counted_lesson(monkeypatch)
    local_y = lesson.local_y
    config = QueryConfig(phase1_epochs=3, batch_size=32, inversion={"samples_per_class": 8, "steps": 2})

    _, _, inputs, _ = learn(student, lesson, config, Variant(short_epochs=True, phase2=False), progress=False)
    assert len(inputs) > 2 * len(local_y)  # widened by inversions and their mixups
    assert sum(trained_on) == 3 * len(local_y)

    trained_on.clear()
    learn(student, lesson, config, Variant(phase2=False), progress=False)
    assert sum(trained_on) == 3 * len(inputs)


def test_without_phase1_mixups_phase1_trains_on_local_and_synthetic_inputs_and_phase2_on_all(monkeypatch):
    student, lesson, trained_on = _counted_lesson(monkeypatch)
    local_y = lesson.local_y
    config = QueryConfig(phase1_epochs=3, phase1_mixups=0, phase2_epochs=1, batch_size=32,
                         inversion={"samples_per_class": 8, "steps": 2})

    _, _, inputs, num_synthetic = learn(student, lesson, config, progress=False)
    assert num_synthetic and len(inputs) == 2 * (len(local_y) + num_synthetic)  # as many mixups as other inputs
    assert sum(trained_on) == 3 * (len(local_y) + num_synthetic) + len(inputs)


def test_a_share_of_the_mixups_per_phase1_epoch_keeps_every_local_and_synthetic_input(monkeypatch):
    student, lesson, trained_on = _counted_lesson(monkeypatch)
    local_y = lesson.local_y
    config = QueryConfig(phase1_epochs=4, phase1_mixups=0.25, batch_size=32, inversion={"samples_per_class": 8, "steps": 2})
    seen: list[torch.Tensor] = []
    orders = training.epoch_orders
    monkeypatch.setattr(training, "epoch_orders", lambda *a, **k: (seen.append(o) or o for o in orders(*a, **k)))

    _, _, inputs, num_synthetic = learn(student, lesson, config, Variant(phase2=False), progress=False)
    unmixed = len(local_y) + num_synthetic
    mixups = len(inputs) - unmixed
    assert sum(trained_on) == 4 * (unmixed + round(mixups / 4))
    epochs = [o for o in seen if len(o) == unmixed + round(mixups / 4)]  # not the draws from the mixups inside them
    assert len(epochs) == 4 and all(set(range(unmixed)) <= set(o.tolist()) for o in epochs)
    drawn = set(torch.cat(epochs).tolist()) - set(range(unmixed))
    assert len(drawn) == min(mixups, 4 * round(mixups / 4))  # four quarters of one shuffled pass: each mixup once


def test_after_its_whole_epochs_phase1_moves_only_the_last_block_and_the_head(monkeypatch):
    student, lesson, _ = _counted_lesson(monkeypatch)
    config = QueryConfig(phase1_epochs=3, batch_size=32, inversion={"samples_per_class": 8, "steps": 2})
    light_part = {id(p) for p in light.light_parameters(student)}
    late = {name for name, p in student.named_parameters() if id(p) in light_part}
    assert late and len(late) < len(dict(student.named_parameters()))

    def weights(epochs, whole_epochs):
        model, *_ = learn(student, lesson, config.model_copy(update={"phase1_epochs": epochs}),
                          Variant(phase2=False, whole_epochs=whole_epochs), progress=False)
        return dict(model.named_parameters())

    first_epoch, schedule, every_epoch = weights(1, 1), weights(3, 1), weights(3, None)
    for name, p in schedule.items():
        assert torch.equal(p, first_epoch[name]) != (name in late), name
        assert not torch.equal(every_epoch[name], first_epoch[name]), name


def test_phase1_frozen_blocks_come_out_of_the_query_as_they_went_in(monkeypatch):
    student, lesson, _ = _counted_lesson(monkeypatch)
    config = QueryConfig(phase1_epochs=2, phase1_frozen_blocks=1, phase2_epochs=1, batch_size=32,
                         inversion={"samples_per_class": 8, "steps": 2})
    model, *_ = learn(student, lesson, config, progress=False)
    before = student.state_dict()
    first_block = next(i for i, block in enumerate(student.features) if list(block.parameters()))  # after the MLP's Flatten
    for name, weights in model.state_dict().items():
        assert torch.equal(weights, before[name]) == name.startswith(f"features.{first_block}."), name


def test_a_lesson_keeps_the_query_as_a_tuple_of_class_indices():
    lesson = Lesson({}, {}, [np.int64(2), 4], torch.zeros(1, 8), torch.zeros(1, dtype=torch.long))
    assert lesson.query == (2, 4) and all(type(c) is int for c in lesson.query)
