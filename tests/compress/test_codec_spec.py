"""CodecSpec parsing, validation and canonical strings (issue 7 §1)."""

from __future__ import annotations

import pytest

from fedprostate.compress.spec import CodecSpec

# -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "fp32",
        "fp16",
        "bf16",
        "int4:block=64",
        "int2:block=32:stochastic",
        "int8:per=row",
        "int8:per=tensor",
        "topk:0.05",
        "topk:0.05+int4:block=64:stochastic",
        "topk:0.1+bf16",
    ],
)
def test_spec_string_round_trips_literally(text):
    spec = CodecSpec.parse(text)
    assert str(spec) == text
    assert CodecSpec.parse(str(spec)) == spec


def test_spec_defaults_and_canonical_form():
    spec = CodecSpec.parse("int8")
    assert (spec.values, spec.per, spec.block, spec.stochastic, spec.topk) == (
        "int8",
        "block",
        64,
        False,
        None,
    )
    assert str(spec) == "int8:block=64"
    assert CodecSpec.parse(" INT4:stochastic:block=16 ") == CodecSpec("int4", "block", 16, True)
    assert CodecSpec.parse("int4:nearest") == CodecSpec("int4")
    assert CodecSpec.parse("topk:0.05").values == "fp32"
    assert [CodecSpec.parse(c).lossy for c in ("fp32", "fp16", "topk:1")] == [False, True, True]
    assert [CodecSpec.parse(c).bits for c in ("fp32", "bf16", "int4", "int2")] == [32, 16, 4, 2]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "non-empty"),
        ("int3", "unknown value format"),
        ("fp16:block=64", "no block/per/stochastic"),
        ("bf16:stochastic", "no block/per/stochastic"),
        ("int4:block=0", "positive integer"),
        ("int4:block=x", "not an integer"),
        ("int4:per=col", "per must be"),
        ("int4:per=row:block=32", "conflicts"),
        ("int4:round=up", "unknown option"),
        ("int4:stochastic:nearest", "rounding given twice"),
        ("topk:0+int4", r"\(0, 1\]"),
        ("topk:1.5", r"\(0, 1\]"),
        ("topk:abc", "not a number"),
        ("topk0.1", "topk:FRACTION"),
        ("topk:0.1+", "nothing after"),
        ("topk:0.1+int8:per=row", "per=row has no meaning"),
    ],
)
def test_spec_parse_errors(text, message):
    with pytest.raises(ValueError, match=message):
        CodecSpec.parse(text)


def test_spec_constructor_validates():
    with pytest.raises(ValueError, match="block"):
        CodecSpec("int4", per="row", block=8)
    with pytest.raises(ValueError, match="stochastic"):
        CodecSpec("fp16", stochastic=True)
    with pytest.raises(ValueError, match="topk"):
        CodecSpec("int4", topk=True)
