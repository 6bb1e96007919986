"""The speed settings change how fast qkt computes, never what it computes."""

from __future__ import annotations

import os

import pytest
import torch
from torch import nn

from qkt.config import InversionConfig, QueryConfig
from qkt.errors import QKTError
from qkt.models import build_model
from qkt.query import phase1, synth
from qkt.query.transfer import TransferSet, train_on_transfer
from qkt.training import epoch_orders, fast_layout, fit, predict_logits, set_threads


def _cnn(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return build_model("cnn", (3, 16, 16), 4).eval()


def _images(n: int = 40, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, 16, 16, generator=torch.Generator().manual_seed(seed))


def test_qkt_image_models_get_channels_last_with_the_same_outputs():
    model, x = _cnn(), _images()
    fast = fast_layout(x, model)
    assert fast.is_contiguous(memory_format=torch.channels_last) and torch.equal(fast, x)
    with torch.no_grad():
        assert torch.allclose(model(fast), model(x), atol=1e-5)


def test_a_users_model_and_feature_vectors_keep_their_layout():
    x = _images()
    assert fast_layout(x, nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, 4))) is x
    vectors = torch.randn(8, 5)
    assert fast_layout(vectors, build_model("mlp", (5,), 3)) is vectors


def test_predictions_do_not_depend_on_the_batch_size():
    model, x = _cnn(), _images(50)
    assert torch.allclose(predict_logits(model, x, batch_size=7), predict_logits(model, x, batch_size=1000), atol=1e-5)


def test_no_input_gives_no_prediction_of_the_models_shape():
    assert predict_logits(_cnn(), _images(0)).shape == (0, 4)


def test_training_in_the_fast_layout_learns_as_before():
    x, y = _images(64), torch.arange(64) % 4
    fast = fit(_cnn(), (x, y), epochs=1, seed=0, progress=False)
    torch.manual_seed(0)
    plain = fit(nn.Sequential(*_cnn().children()), (x, y), epochs=1, seed=0, progress=False)  # not a qkt model: default layout
    for a, b in zip(fast.parameters(), plain.parameters(), strict=True):
        assert torch.allclose(a, b, atol=1e-2)


def test_training_some_parameters_runs_no_backward_pass_for_the_others():
    model, x, y = _cnn(), _images(32), torch.arange(32) % 4
    fit(model, (x, y), epochs=1, params=model.head.parameters(), seed=0, progress=False)
    assert all(p.grad is None for p in model.features.parameters()) and model.head.weight.grad is not None
    assert all(p.requires_grad for p in model.parameters())


@pytest.mark.parametrize("frozen_blocks, trained", [(None, ("features.2.", "head.")), (1, ("features.1.", "features.2.", "head."))])
def test_frozen_blocks_train_on_their_outputs_as_on_the_whole_model(frozen_blocks, trained):
    """QKT Light (None) and ``query.phase1_frozen_blocks`` compute their frozen blocks once; the trained weights are those of training the whole model's other parameters."""
    x = _images(48)
    transfer = TransferSet.querier_first(x, torch.softmax(torch.randn(48, 4, generator=torch.Generator().manual_seed(1)), 1),
                                         torch.arange(32) % 4)
    config = QueryConfig(batch_size=16)
    whole = _cnn()
    params = [p for name, p in whole.named_parameters() if name.startswith(trained)]
    train_on_transfer(whole, transfer, config, epochs=2, lr=1e-2, params=params, progress=False)
    cached = _cnn()
    tail, outputs, params = phase1.trained_part(cached, x, frozen_blocks=frozen_blocks)
    assert params is None and tail.head is cached.head and len(outputs) == len(x)
    train_on_transfer(tail, TransferSet(outputs, transfer.targets, transfer.labels, transfer.weights), config, epochs=2, lr=1e-2,
                      progress=False)
    untrained = _cnn().state_dict()
    changed = [k for k, v in cached.state_dict().items() if not torch.equal(v, untrained[k])]
    assert changed and all(k.startswith(trained) for k in changed) and all(any(k.startswith(t) for k in changed) for t in trained)
    for (name, a), b in zip(whole.state_dict().items(), cached.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def test_frozen_blocks_need_a_student_with_feature_blocks():
    with pytest.raises(QKTError, match="phase1_frozen_blocks"):
        phase1.trained_part(nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, 4)), _images(4), frozen_blocks=1)


def test_an_epoch_is_one_shuffled_pass_unless_sized():
    orders = list(epoch_orders(10, 3, torch.Generator().manual_seed(0)))
    assert len(orders) == 3 and all(sorted(o.tolist()) == list(range(10)) for o in orders)
    assert orders[0].tolist() != orders[1].tolist()


def test_sized_epochs_draw_every_sample_as_often_as_any_other():
    orders = list(epoch_orders(10, 7, torch.Generator().manual_seed(0), epoch_size=4))
    assert [len(o) for o in orders] == [4] * 7
    counts = torch.bincount(torch.cat(orders), minlength=10)
    assert counts.min() >= 2 and counts.max() <= 3
    assert [len(o) for o in epoch_orders(0, 2, torch.Generator(), epoch_size=4)] == [0, 0]


def test_sized_epochs_can_hold_the_first_samples_in_every_epoch_and_take_the_rest_in_turn():
    orders = list(epoch_orders(10, 6, torch.Generator().manual_seed(0), epoch_size=5, keep_first=3))
    assert [len(o) for o in orders] == [5] * 6
    assert all(set(range(3)) <= set(o.tolist()) for o in orders)
    rest = torch.bincount(torch.cat(orders), minlength=10)[3:]
    assert rest.min() >= 1 and rest.max() <= 2 and rest.sum() == 12  # 7 samples, 2 per epoch: each once or twice
    assert orders[0][:3].tolist() != [0, 1, 2] or orders[1][:3].tolist() != [0, 1, 2]  # shuffled with the others


def test_inversion_leaves_the_model_as_it_was():
    model = _cnn()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    x, targets = synth.invert(model, [1, 2], (3, 16, 16), InversionConfig(steps=3), seed=0, num_per_class=4)
    assert x.shape == (8, 3, 16, 16) and targets.tolist() == [1, 1, 1, 1, 2, 2, 2, 2]
    assert not model._forward_pre_hooks and all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert all(p.requires_grad for p in model.parameters())


def test_set_threads_uses_at_least_one_thread_and_at_most_every_core():
    before = torch.get_num_threads()
    try:
        set_threads()
        assert 1 <= torch.get_num_threads() <= (os.cpu_count() or 1)
        set_threads(1)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_batchnorm_statistics_and_their_gradient_are_autograds_own():
    for shape in [(6, 3, 5, 5), (7, 4)]:  # a conv layer's activations (also channels-last) and an MLP's
        plain = torch.randn(*shape, dtype=torch.double, generator=torch.Generator().manual_seed(0)) * 2 + 1
        for x in [plain, plain.contiguous(memory_format=torch.channels_last)] if plain.ndim == 4 else [plain]:
            dims = [0, *range(2, x.ndim)]
            mean, var = synth.ChannelStatistics.apply(x)
            assert torch.allclose(mean, x.mean(dims)) and torch.allclose(var, x.var(dims, unbiased=False))
            assert torch.autograd.gradcheck(synth.ChannelStatistics.apply, (x.requires_grad_(True),))
