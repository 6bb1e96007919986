"""What a careless caller hands ``qkt.query``: used as meant, or refused with one clear QKTError line, never coerced or a raw exception."""

from __future__ import annotations

import copy
import re

import numpy as np
import pytest
import torch
from torch import nn

import qkt
from qkt.config import parse_config
from qkt.models import build_model
from qkt.query import InProcessChannel
from qkt.training import fit

TINY = qkt.QueryConfig(phase1_epochs=1, phase2_epochs=1, inversion={"samples_per_class": 8, "steps": 2},
                       probe={"steps": 2, "num_samples": 16})


def _data(classes: list[int], shift: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Shifted by the label, and each class lights its own feature: a teacher tells its two classes apart on any input."""
    g = torch.Generator().manual_seed(seed)
    y = torch.tensor(classes).repeat(30)
    return torch.randn(len(y), 8, generator=g) + shift * (y[:, None] + 3 * nn.functional.one_hot(y, 8)), y


@pytest.fixture(scope="module")
def world():
    """A querier holding classes 0 and 1 of four, a teacher holding 2 and 3, and the querier's data."""
    torch.manual_seed(0)
    local = _data([0, 1], 1.0, 0)
    student = fit(build_model("mlp", (8,), 4), local, epochs=30, progress=False)
    teacher = fit(build_model("mlp", (8,), 4), _data([2, 3], 1.0, 1), epochs=30, progress=False)
    return student, teacher, local


def _query(world, **changes):
    student, teacher, local = world
    args = {"student": student, "teachers": {"t": teacher}, "query_classes": [2], "local_data": local, "config": TINY,
            "num_classes": None}
    args.update(changes)
    return qkt.query(progress=False, **args)


def _refused(world, says: str, error: type[qkt.QKTError] = qkt.QueryError, **changes) -> str:
    with pytest.raises(error) as info:
        _query(world, **changes)
    message = str(info.value)
    assert says in message and "\n" not in message
    return message


# --- 44.15: nothing is coerced ----------------------------------------------------------------------------

@pytest.mark.parametrize(("query", "says"), [
    ("12", "not '12' (str)"),
    ([7.9], "got 7.9 (float)"),
    ([2.0], "got 2.0 (float)"),
    ([True], "got True (bool)"),
    (True, "not True (bool)"),
    ([np.bool_(True)], "(bool"),
    (np.array([2.5]), "got 2.5 (float)"),
], ids=["string", "float", "integral-float", "bool-in-list", "bool", "numpy-bool", "float-array"])
def test_query_classes_are_not_coerced(world, query, says):
    _refused(world, says, query_classes=query)


def test_teacher_names_that_would_collide_are_refused(world):
    _, teacher, _ = world
    _refused(world, "teacher names must be strings, not 1 (int)", teachers={1: teacher, "1": copy.deepcopy(teacher)})
    with pytest.raises(qkt.QueryError, match="teacher names must be strings"):
        InProcessChannel({0: teacher})


# --- 44.16: accepted as meant ------------------------------------------------------------------------------

def test_a_single_integer_is_a_query_of_one_class(world):
    _, report = _query(world, query_classes=2)
    assert report.query == (2,) and report.experts == {2: ["t"]}
    _, report = _query(world, query_classes=np.array([2]))
    assert report.query == (2,)


@pytest.mark.parametrize("convert", [lambda x: x.numpy(), lambda x: x.double(), lambda x: x.half(), lambda x: x.double().numpy()],
                         ids=["numpy", "float64", "float16", "numpy-float64"])
def test_inputs_of_another_type_are_converted_to_the_models(world, convert):
    student, teacher, (x, y) = world
    reference, _ = _query(world)
    model, report = _query(world, local_data=(convert(x), y.numpy().astype(np.uint64)))
    assert report.experts == {2: ["t"]}
    if convert(x).dtype in (np.float32, torch.float32, np.float64, torch.float64):  # float16 rounds the inputs themselves
        assert all(torch.equal(v, model.state_dict()[k]) for k, v in reference.state_dict().items())


def test_a_config_may_be_a_dict_and_is_validated(world):
    reference, _ = _query(world)
    model, _ = _query(world, config=TINY.model_dump())
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in reference.state_dict().items())
    message = _refused(world, "lam: Input should be greater than or equal to 1", qkt.ConfigError, config={"lam": -1})
    assert message.startswith("query config: 1 invalid setting(s)")
    _refused(world, "config must be a qkt.QueryConfig or a mapping", qkt.ConfigError, config=[("lam", 2)])


# --- 44.16: refused with one line ---------------------------------------------------------------------------

class Tupled(nn.Module):
    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner(x), x


class OneClass(Tupled):
    def forward(self, x):
        return self.inner(x)[:, 2]


@pytest.mark.parametrize(("teacher", "says"), [
    (lambda t: Tupled(t), "teacher 't' returns tuple, not a tensor of logits"),
    (lambda t: OneClass(t), "teacher 't' returns a tensor of shape (2,) for 2 inputs; logits must be (inputs, classes)"),
    (lambda t: (lambda x: t(x)), "teacher 't' is function, not a torch.nn.Module"),
    (lambda t: qkt.Teacher(None), "teacher 't' is NoneType, not a torch.nn.Module"),
], ids=["tuple-output", "1d-output", "function", "none"])
def test_teachers_that_are_not_classifiers_are_refused(world, teacher, says):
    _refused(world, says, teachers={"t": teacher(world[1])})


def test_a_teacher_module_instead_of_a_collection_is_refused(world):
    _refused(world, "teachers must be a mapping of names to models or a list of models, not Sequential",
             teachers=nn.Sequential(nn.Linear(8, 4)))


@pytest.mark.parametrize(("local", "says"), [
    (lambda x, y: (torch.randn(len(y), 5), y), "the student fails on local inputs of shape (5,): RuntimeError: mat1 and mat2"),
    (lambda x, y: x, "local data must be (inputs, labels) tensors, a torch Dataset or a DataLoader, not Tensor"),
    (lambda x, y: (x, y, y), "local data must be a pair (inputs, labels), not tuple of 3"),
    (lambda x, y: (x.tolist(), y), "local inputs must be a torch.Tensor or a NumPy array, not list"),
    (lambda x, y: ((x * 50).to(torch.uint8), y), "local inputs are torch.uint8; the models take floating-point inputs"),
    (lambda x, y: (x[0], y), "local inputs must be a batch (samples first)"),
    (lambda x, y: (x.masked_fill(x > 2, float("nan")), y), "non-finite value(s) (NaN, or infinite as torch.float32)"),
    (lambda x, y: (x.double() * 1e300, y), "non-finite value(s) (NaN, or infinite as torch.float32)"),
    (lambda x, y: (x.numpy().astype(str), y), "local inputs are a NumPy array of <U"),
    (lambda x, y: (x, y.numpy().astype(object)), "local labels are a NumPy array of object, which torch cannot hold"),
], ids=["wrong-shape", "not-a-pair", "three", "list", "integer-inputs", "one-sample", "nan", "beyond-float32", "strings",
        "objects"])
def test_local_data_a_query_cannot_use_is_refused(world, local, says):
    _refused(world, says, local_data=local(*world[2]))


@pytest.mark.parametrize("num_classes", ["4", True, 4.0, 1])
def test_a_label_space_that_is_not_a_count_is_refused(world, num_classes):
    _refused(world, f"num_classes must be an integer of at least 2, not {num_classes!r}", num_classes=num_classes)


@pytest.mark.parametrize("frozen", ["all", "head"])
def test_a_student_whose_head_is_frozen_is_refused(world, frozen):
    student = copy.deepcopy(world[0])
    for p in (student.parameters() if frozen == "all" else student.head.parameters()):
        p.requires_grad_(False)
    who = "every parameter of the student" if frozen == "all" else "the student's head"
    _refused(world, f"{who} has requires_grad=False, but a query trains the head", student=student)


# --- 44.16: a teacher that raises costs its place, not the query ----------------------------------------------

class Raising(Tupled):
    """Raises on every input, or only on inputs like the querier's (mean above 2): it passes the probe, fails the checks."""

    def __init__(self, inner: nn.Module, always: bool):
        super().__init__(inner)
        self.always = always

    def forward(self, x):
        if self.always or len(x) == 2 or x.mean() > 2:
            raise RuntimeError("out of memory")
        return self.inner(x)


def test_a_teacher_that_raises_on_the_probe_is_lost(world):
    _, teacher, _ = world
    with pytest.warns(UserWarning, match="teacher 'bad' was lost: failed to answer: RuntimeError: out of memory"):
        _, report = _query(world, teachers={"t": teacher, "bad": Raising(copy.deepcopy(teacher), always=True)})
    assert report.experts == {2: ["t"]} and report.lost == {"bad": "failed to answer: RuntimeError: out of memory"}


def test_a_teacher_that_raises_on_the_checks_is_distrusted(world):
    _, teacher, (x, y) = world
    with pytest.warns(UserWarning, match="teacher 'bad' distrusted: its model fails on the querier's checks"):
        _, report = _query(world, teachers={"t": teacher, "bad": Raising(copy.deepcopy(teacher), always=False)},
                           local_data=(x + 5, y))
    assert report.distrusted == {"bad": ["its model fails on the querier's checks: RuntimeError: out of memory"]}
    assert report.experts == {2: ["t"]} and not report.lost


@pytest.mark.parametrize(("setting", "says"), [
    ({"query": [True]}, "scenario.query.0: Input should be a valid integer (got true)"),
    ({"query": ["12"]}, 'scenario.query.0: Input should be a valid integer (got "12")'),
    ({"query": [2.0]}, "scenario.query.0: Input should be a valid integer (got 2.0)"),
    ({"querier": True}, "scenario.querier: Input should be a valid integer (got true)"),
], ids=["bool-class", "string-class", "float-class", "bool-querier"])
def test_a_run_config_does_not_coerce_classes_or_parties(setting, says):
    with pytest.raises(qkt.ConfigError, match=re.escape(says)):
        parse_config({"scenario": setting})


def test_more_parties_than_the_data_can_fill_are_refused_at_once():
    from qkt.partition import dirichlet

    with pytest.raises(qkt.QKTError, match="100000 parties of at least 10 samples each need 1000000 training samples; the data has 300"):
        dirichlet(np.arange(300) % 3, 100_000, 0.1, seed=0)


class NoState(Tupled):
    """Answers the probe, then fails to export its weights."""

    def forward(self, x):
        return self.inner(x)

    def state_dict(self, *args, **kwargs):
        raise RuntimeError("disk full")


def test_a_teacher_that_raises_sending_its_weights_is_lost(world):
    _, teacher, _ = world
    with pytest.warns(UserWarning, match="teacher 'bad' was lost: failed to send its weights"):
        _, report = _query(world, teachers={"t": teacher, "bad": NoState(copy.deepcopy(teacher))})
    assert report.lost == {"bad": "failed to send its weights: RuntimeError: disk full"}
    assert report.experts == {2: ["t"]}


# --- 44.16: every entry of the API, and every option of a query ------------------------------------------------

@pytest.mark.parametrize("which", ["teacher", "student"])
def test_float64_and_float32_models_query_each_other(world, which):
    student, teacher, _ = world
    changes = ({"teachers": {"t": copy.deepcopy(teacher).double()}} if which == "teacher"
               else {"student": copy.deepcopy(student).double()})
    model, report = _query(world, **changes)
    assert report.experts == {2: ["t"]} and report.num_synthetic > 0
    assert next(model.parameters()).dtype == (torch.float64 if which == "student" else torch.float32)


def test_config_errors_name_the_key_in_a_dict_and_in_python(world):
    _refused(world, "probe.step: unknown key; did you mean 'steps'?", qkt.ConfigError, config={"probe": {"step": 5}})
    _refused(world, "lamda: unknown key; did you mean 'lam'?", qkt.ConfigError, config={"lamda": 2.0})
    with pytest.raises(qkt.ConfigError, match=r"^QueryConfig: 1 invalid setting\(s\); phase1_epoch: unknown key; did you mean 'phase1_epochs'\?$"):
        qkt.QueryConfig(phase1_epoch=3)
    config = qkt.QueryConfig()
    with pytest.raises(qkt.ConfigError, match="lam: Input should be greater than or equal to 1"):
        config.lam = 0.5
    with pytest.raises(qkt.ConfigError, match="gate_inversions: Input should be a valid integer"):
        qkt.QueryConfig(gate="query_mass", gate_inversions=True)  # not one inversion per class


@pytest.mark.parametrize("amp", ["bfloat16", True, torch.bfloat16])
def test_an_unknown_mixed_precision_is_refused_before_any_teacher_is_asked(world, amp):
    _, teacher, _ = world
    asked = Raising(copy.deepcopy(teacher), always=True)  # would be lost, with a warning, if it were asked
    _refused(world, f"amp must be one of 'bf16', 'fp16' or None, not {amp!r}", amp=amp, teachers={"t": asked})


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_a_torch_device_this_machine_lacks_is_refused_as_its_name_is(world):
    _refused(world, "device 'cuda' is not available on this machine", qkt.QKTError, device=torch.device("cuda"))


def test_a_student_without_values_is_refused(world):
    _refused(world, "the student is on the meta device", student=copy.deepcopy(world[0]).to("meta"))


@pytest.mark.parametrize(("teacher", "says"), [
    (lambda t, x, y: qkt.Teacher(t, holdout=(x, y.float())), "a teacher's held-out labels must be a 1-D integer tensor of class indices, not torch.float32"),
    (lambda t, x, y: qkt.Teacher(t, holdout=(y, x)), "a teacher's held-out inputs are torch.int64"),
    (lambda t, x, y: qkt.Teacher(t, holdout=(x * float("nan"), y)), "a teacher's held-out inputs hold"),
    (lambda t, x, y: qkt.Teacher(t, holdout=(x[:0], y[:0])), "a teacher's held-out data must be non-empty inputs and labels of equal length (got 0 and 0)"),
    (lambda t, x, y: qkt.Teacher(t, holdout=(x, y, y)), "a teacher's held-out data must be a pair (inputs, labels), not tuple of 3"),
    (lambda t, x, y: qkt.Teacher(t, policy={"noise": "none"}), "a teacher's policy must be a qkt.TeacherPolicy, not dict"),
], ids=["float-labels", "swapped", "nan", "empty", "three", "policy-dict"])
def test_a_teacher_given_data_or_a_policy_it_cannot_use_is_refused(world, teacher, says):
    _, t, (x, y) = world
    with pytest.raises(qkt.QueryError) as info:
        teacher(t, x, y)
    assert says in str(info.value) and "\n" not in str(info.value)


def test_held_out_data_of_a_teacher_are_taken_as_numpy_and_said_unused_by_a_data_free_probe(world):
    _, teacher, (x, y) = world
    wrapped = qkt.Teacher(teacher, holdout=(x.double().numpy(), y.numpy()))
    assert wrapped.holdout[0].dtype == torch.float64 and wrapped.holdout[1].dtype == torch.int64
    with pytest.warns(UserWarning, match="held-out data of teacher\\(s\\) 't' go unused: the 'statistics' probe is data-free"):
        _query(world, teachers={"t": wrapped})


def test_the_same_model_given_twice_is_refused(world):
    _, teacher, _ = world
    _refused(world, "teachers '0' and '1' are the same model", teachers=[teacher, teacher])
    _refused(world, "teachers 'a' and 'b' are the same model", teachers={"a": teacher, "b": qkt.Teacher(teacher)})


def test_a_public_pool_that_is_empty_or_on_another_scale_is_refused_or_said(world):
    _, _, (x, _) = world
    _refused(world, "public inputs are empty: pass None for no pool", public_inputs=x[:0])
    with pytest.warns(UserWarning, match="normalise the pool as the local inputs are"):
        _, report = _query(world, public_inputs=x[:20] * 255)
    assert any("normalise the pool" in w for w in report.warnings)
    with pytest.warns(UserWarning, match="query.public_pool = 5 but 20 public inputs were given: all 20 are used"):
        _, report = _query(world, public_inputs=x[:20], config=TINY.model_copy(update={"public_pool": 5}))
    assert report.num_public == 20


@pytest.mark.parametrize(("call", "says"), [
    (lambda s, t, local: qkt.run_query(s, {"t": t}, [2], local), "channel must be a qkt.TeacherChannel, e.g. qkt.InProcessChannel(teachers), not dict"),
    (lambda s, t, local: qkt.run_query(None, InProcessChannel({"t": t}), [2], local), "the student is NoneType, not a torch.nn.Module"),
    (lambda s, t, local: qkt.run_query(s, InProcessChannel({"t": t}), [2], local, num_classes=4.0), "num_classes must be an integer of at least 2, not 4.0"),
    (lambda s, t, local: qkt.run_query(s.half(), InProcessChannel({"t": t}), [2], local), "the student has parameters of float16"),
    (lambda s, t, local: InProcessChannel([t]), "teachers must be a mapping of names to models, not list"),
], ids=["dict-channel", "no-student", "float-classes", "half-student", "list-channel"])
def test_run_query_and_its_channel_check_what_they_are_given(world, call, says):
    student, teacher, local = world
    with pytest.raises(qkt.QueryError) as info:
        call(copy.deepcopy(student), teacher, local)
    assert says in str(info.value) and "\n" not in str(info.value)


def test_a_gated_model_built_by_hand_checks_its_query():
    from qkt.query.gate import GatedModel

    model = build_model("mlp", (8,), 4)
    assert GatedModel(model, model, 2, 4).query.tolist() == [False, False, True, False]
    with pytest.raises(qkt.QueryError, match=r"query class\(es\) \[4\] are outside the label space 0..3"):
        GatedModel(model, model, [4], 4)
    wider = build_model("mlp", (8,), 5)
    with pytest.raises(qkt.QueryError, match=r"the new model outputs logits of shape \(3, 5\); the gate was built for num_classes=4"):
        GatedModel(model, wider, 2, 4)(torch.zeros(3, 8))


def test_a_transfer_set_of_one_input_is_refused(world):
    _, _, (x, y) = world
    _refused(world, "the transfer set holds 1 input", local_data=(x[:1], y[:1]),
             config=TINY.model_copy(update={"mixup": 0.0, "inversion": TINY.inversion.model_copy(update={"enabled": False})}))


def test_numpy_integers_are_counts_and_booleans_are_not():
    assert qkt.QueryConfig(phase1_epochs=np.int64(5), gate="query_mass", gate_inversions=np.int32(8)).phase1_epochs == 5
    with pytest.raises(qkt.ConfigError, match="phase1_epochs: Input should be a valid integer"):
        qkt.QueryConfig(phase1_epochs=True)
    with pytest.raises(qkt.ConfigError, match="lr: Value error, expected a number"):
        qkt.QueryConfig(lr=True)
