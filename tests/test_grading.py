"""lib.grading: what a test cell accepts and rejects, and the shortcut block."""

import json
import re

import pytest
import torch
from torch.distributions import Normal, kl_divergence

import lib.kl
from lib.grading import call, check, expect_close, shortcuts_blocked


def test_a_right_answer_passes_and_is_returned():
    got = check(
        lambda x: x * 2, torch.tensor([1.0, 2.0]), expected=torch.tensor([2.0, 4.0])
    )
    assert torch.equal(got, torch.tensor([2.0, 4.0]))


def test_a_wrong_value_fails_with_call_result_expectation_and_hint():
    with pytest.raises(AssertionError) as info:
        check(
            lambda x: x * 3,
            torch.tensor([1.0]),
            expected=torch.tensor([2.0]),
            hint="double it",
        )
    message = str(info.value)
    assert "<lambda>(tensor([1.]))" in message and "tensor([3.])" in message
    assert "tensor([2.])" in message and "Hint: double it" in message


class AlwaysEqual:
    def __eq__(self, other):
        return True

    def __bool__(self):
        return True


class LyingTensor(torch.Tensor):
    def __eq__(self, other):
        return True


@pytest.mark.parametrize(
    "answer, words",
    [
        (AlwaysEqual(), "of type AlwaysEqual"),
        (torch.tensor([2.0]).as_subclass(LyingTensor), "of type LyingTensor"),
        (torch.tensor([2]), "dtype torch.int64"),
        (torch.tensor([[2.0]]), r"shape \(1, 1\)"),
        (torch.tensor([float("nan")]), "entries differ"),
        (2.0, "of type float"),
    ],
)
def test_impostors_fail(answer, words):
    with pytest.raises(AssertionError, match=words):
        check(lambda: answer, expected=torch.tensor([2.0]))


def test_infinities_must_match():
    expect_close(torch.tensor([float("inf"), 1.0]), torch.tensor([float("inf"), 1.0]))
    with pytest.raises(AssertionError):
        expect_close(torch.tensor([1e30, 1.0]), torch.tensor([float("inf"), 1.0]))


def test_exceptions_become_readable_failures():
    def unfinished(x):
        raise NotImplementedError()

    with pytest.raises(AssertionError, match="raised NotImplementedError: replace"):
        check(unfinished, torch.ones(1), expected=torch.ones(1))
    with pytest.raises(AssertionError, match="raised ZeroDivisionError"):
        call(lambda: 1 / 0)


def test_arguments_are_copied():
    x = torch.ones(3)
    call(lambda t: t.mul_(5), x)
    assert torch.equal(x, torch.ones(3))


def test_shortcuts_are_blocked_by_name_and_by_alias_then_restored():
    p, q = Normal(0.0, 1.0), Normal(1.0, 1.0)
    original = kl_divergence(p, q)
    blocked = ["torch.distributions.kl_divergence", "lib.kl.kl_categorical"]

    def by_alias(p, q):
        return kl_divergence(p, q)  # imported before the block

    def by_module(p, q):
        return torch.distributions.kl_divergence(p, q)

    def by_lib(p, q):
        return lib.kl.kl_categorical(torch.tensor([1.0]), torch.tensor([1.0]))

    for cheat in (by_alias, by_module, by_lib):
        with pytest.raises(AssertionError, match="gives the answer away"):
            call(cheat, p, q, blocked=blocked)
    assert torch.equal(kl_divergence(p, q), original)
    assert torch.distributions.kl_divergence is kl_divergence
    assert lib.kl.kl_categorical(torch.tensor([1.0]), torch.tensor([1.0])) == 0


def test_block_is_restored_when_the_student_code_fails():
    with pytest.raises(RuntimeError):
        with shortcuts_blocked("torch.distributions.kl_divergence"):
            raise RuntimeError("student error")
    assert kl_divergence(Normal(0.0, 1.0), Normal(0.0, 1.0)) == 0


def test_unknown_shortcut_name():
    with pytest.raises((ValueError, AttributeError)):
        with shortcuts_blocked("torch.no_such_module.thing"):
            pass


# ---------------------------------------------------------------------------- the wire
# to the grader

from lib.grading import MAX_REPLY_BYTES, Unsendable, decode, encode  # noqa: E402


@pytest.mark.parametrize(
    "value",
    [
        torch.tensor([1.5, -2.0]),
        torch.arange(6).reshape(2, 3),
        torch.tensor([True, False]),
        torch.zeros(0, 3),
        torch.tensor(3.0, dtype=torch.float64),
        torch.randn(2, 2).to(torch.bfloat16),
        3,
        2.5,
        float("inf"),
        "text",
        None,
        True,
        (1, 2.0),
        [torch.ones(2), "a"],
        {"loss": torch.tensor(1.0), 3: [4]},
    ],
)
def test_plain_data_comes_back_exactly(value):
    got = decode(json.loads(json.dumps(encode(value))))
    if isinstance(value, torch.Tensor):
        assert (
            type(got) is torch.Tensor
            and got.dtype == value.dtype
            and torch.equal(got, value)
        )
    elif isinstance(value, dict):
        assert (
            set(got) == set(value)
            and torch.equal(got["loss"], value["loss"])
            and got[3] == [4]
        )
    elif isinstance(value, list):
        assert torch.equal(got[0], value[0]) and got[1] == "a"
    else:
        assert got == value and type(got) is type(value)


class Sly(torch.Tensor):
    pass


def numbers():
    yield 1


@pytest.mark.parametrize(
    "value, words",
    [
        (object(), "an object of type builtins.object"),
        (torch.ones(2).as_subclass(Sly), "a tensor subclass (Sly)"),
        (numbers(), "a generator object"),
        (torch.zeros(MAX_REPLY_BYTES // 4 + 1), "tensors of more than 100 MB"),
        (
            {
                "deep": [
                    [
                        [
                            [
                                [
                                    [
                                        [
                                            [
                                                [
                                                    [
                                                        [
                                                            [
                                                                [
                                                                    [
                                                                        [
                                                                            [
                                                                                [
                                                                                    [
                                                                                        [
                                                                                            [
                                                                                                [
                                                                                                    [
                                                                                                        [
                                                                                                            [
                                                                                                                [
                                                                                                                    [
                                                                                                                        [
                                                                                                                            [
                                                                                                                                [
                                                                                                                                    [
                                                                                                                                        [
                                                                                                                                            [
                                                                                                                                                [
                                                                                                                                                    [
                                                                                                                                                        [
                                                                                                                                                            [
                                                                                                                                                                [
                                                                                                                                                                    [
                                                                                                                                                                        [
                                                                                                                                                                            [
                                                                                                                                                                                [
                                                                                                                                                                                    [
                                                                                                                                                                                        [
                                                                                                                                                                                            [
                                                                                                                                                                                                [
                                                                                                                                                                                                    [
                                                                                                                                                                                                        [
                                                                                                                                                                                                            [
                                                                                                                                                                                                                [
                                                                                                                                                                                                                    [
                                                                                                                                                                                                                        [
                                                                                                                                                                                                                            [
                                                                                                                                                                                                                                1
                                                                                                                                                                                                                            ]
                                                                                                                                                                                                                        ]
                                                                                                                                                                                                                    ]
                                                                                                                                                                                                                ]
                                                                                                                                                                                                            ]
                                                                                                                                                                                                        ]
                                                                                                                                                                                                    ]
                                                                                                                                                                                                ]
                                                                                                                                                                                            ]
                                                                                                                                                                                        ]
                                                                                                                                                                                    ]
                                                                                                                                                                                ]
                                                                                                                                                                            ]
                                                                                                                                                                        ]
                                                                                                                                                                    ]
                                                                                                                                                                ]
                                                                                                                                                            ]
                                                                                                                                                        ]
                                                                                                                                                    ]
                                                                                                                                                ]
                                                                                                                                            ]
                                                                                                                                        ]
                                                                                                                                    ]
                                                                                                                                ]
                                                                                                                            ]
                                                                                                                        ]
                                                                                                                    ]
                                                                                                                ]
                                                                                                            ]
                                                                                                        ]
                                                                                                    ]
                                                                                                ]
                                                                                            ]
                                                                                        ]
                                                                                    ]
                                                                                ]
                                                                            ]
                                                                        ]
                                                                    ]
                                                                ]
                                                            ]
                                                        ]
                                                    ]
                                                ]
                                            ]
                                        ]
                                    ]
                                ]
                            ]
                        ]
                    ]
                ]
            },
            "nested more than 50 levels",
        ),
    ],
)
def test_what_cannot_be_sent_is_named(value, words):
    with pytest.raises(Unsendable, match=re.escape(words)):
        encode(value)


@pytest.mark.parametrize(
    "tree",
    [
        {"tensor": ["float32", [2], "AAAA"]},  # 3 bytes for 8
        {"tensor": ["object", [1], ""]},  # no such dtype
        {"tensor": ["float32", [-1], ""]},  # a negative size
        {"pickle": "gASV"},  # anything but the known nodes
        {"list": [1], "tuple": [2]},
        # a module, and nothing to rebuild it with
        {"module": [["__main__.X"], {}, {"dict": []}]},
    ],
)
def test_the_decoder_rejects_what_encode_never_sends(tree):
    with pytest.raises((ValueError, KeyError)):
        decode(tree)


def test_a_module_comes_back_as_weights_rebuilt_by_a_trusted_class():
    net = torch.nn.Linear(3, 2)
    seen = {}

    def rebuild(classes, config, state):
        seen.update(classes=classes, state=state)
        return "rebuilt"

    assert decode(json.loads(json.dumps(encode(net))), rebuild) == "rebuilt"
    assert seen["classes"][0] == "torch.nn.modules.linear.Linear"
    assert torch.equal(seen["state"]["weight"], net.weight.detach())
