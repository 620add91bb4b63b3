"""The WASM adapter's value conversions and call planning: pure Python, no wasmtime."""

from __future__ import annotations

import math
import struct

import msgspec
import pytest

from corral.adapters.wasm.abi import (
    ELEMENT_TYPES,
    Signature,
    decode_elements,
    element,
    encode_elements,
    plan_call,
    scalar_param,
)
from corral.adapters.wasm.messages import ComputeRequest
from corral.errors import ModuleError, ValidationError

# --- arrays ------------------------------------------------------------------------------------

EXTREMES = {
    "i8": [-128, 0, 127],
    "u8": [0, 1, 255],
    "i16": [-32768, 32767],
    "u16": [0, 65535],
    "i32": [-(2**31), 2**31 - 1],
    "u32": [0, 2**32 - 1],
    "i64": [-(2**63), 2**63 - 1],
    "u64": [0, 2**64 - 1],
    "f32": [-1.5, 0.0, 3.25, 1e30],
    "f64": [-1.5, 0.1, 1e300, -0.0],
}


@pytest.mark.parametrize(("type_", "values"), EXTREMES.items())
def test_every_numeric_type_round_trips_at_its_extremes(type_: str, values: list[int | float]) -> None:
    kind = element(type_, "$.t")
    raw = encode_elements(kind, values, "$.arrays[0]")
    assert len(raw) == kind.size * len(values)
    decoded = decode_elements(kind, raw, "buf")
    if type_ == "f32":
        assert decoded == [struct.unpack("<f", struct.pack("<f", v))[0] for v in values]
    else:
        assert decoded == values


def test_elements_are_little_endian() -> None:
    assert encode_elements(ELEMENT_TYPES["i32"], [1, -2], "$") == struct.pack("<ii", 1, -2)
    assert encode_elements(ELEMENT_TYPES["f64"], [0.5], "$") == struct.pack("<d", 0.5)


def test_utf8_is_bytes_of_the_string() -> None:
    kind = ELEMENT_TYPES["utf8"]
    assert encode_elements(kind, "héllo", "$") == "héllo".encode()
    assert decode_elements(kind, "héllo".encode(), "buf") == "héllo"


@pytest.mark.parametrize(
    ("type_", "data", "message"),
    [
        ("u8", [1, 256], "element 1 is 256, outside the u8 range 0..255 - at `$.arrays[2].data[1]`"),
        ("i8", [-129], "element 0 is -129, outside the i8 range -128..127 - at `$.arrays[2].data[0]`"),
        (
            "u64",
            [-1],
            "element 0 is -1, outside the u64 range 0..18446744073709551615 - at `$.arrays[2].data[0]`",
        ),
        ("i32", [1, 2.5], "element 1 is 2.5, not an integer as i32 needs - at `$.arrays[2].data[1]`"),
        (
            "f32",
            [1.0, 1e39],
            "element 1 is 1e+39, too large for f32 (max 3.40282e+38) - at `$.arrays[2].data[1]`",
        ),
        ("f64", "abc", "a f64 array takes a list of numbers, got a string - at `$.arrays[2].data`"),
        ("utf8", [1], "a utf8 array takes a string, got a list - at `$.arrays[2].data`"),
    ],
)
def test_a_bad_element_is_named_with_its_path(type_: str, data: list[float] | str, message: str) -> None:
    with pytest.raises(ValidationError) as caught:
        encode_elements(ELEMENT_TYPES[type_], data, "$.arrays[2]")
    assert caught.value.errors == [message]


def test_f32_keeps_an_infinity_given_as_such() -> None:
    raw = encode_elements(ELEMENT_TYPES["f32"], [math.inf], "$")
    assert decode_elements(ELEMENT_TYPES["f32"], raw, "buf") == [math.inf]


def test_an_unknown_element_type_lists_the_known_ones() -> None:
    with pytest.raises(ValidationError) as caught:
        element("f16", "$.result.type")
    assert caught.value.errors == [
        "unknown element type 'f16': use one of i8, u8, i16, u16, i32, u32, i64, u64, f32, f64, utf8 "
        "- at `$.result.type`"
    ]


def test_invalid_utf8_from_the_guest_is_a_module_error() -> None:
    with pytest.raises(
        ModuleError, match=r"^physics buffer at 64 is not valid UTF-8: invalid start byte at byte 1$"
    ):
        decode_elements(ELEMENT_TYPES["utf8"], b"a\xffb", "physics buffer at 64")


def test_a_request_with_a_bad_array_type_fails_to_decode_with_its_path() -> None:
    body = b'{"function": "f", "arrays": [{"type": "f64", "data": [1]}, {"type": "float", "data": [1]}]}'
    with pytest.raises(msgspec.ValidationError) as caught:
        msgspec.json.decode(body, type=ComputeRequest)
    assert str(caught.value) == (
        "unknown element type 'float': use one of i8, u8, i16, u16, i32, u32, i64, u64, f32, f64, utf8 "
        "- at `$.arrays[1]`"
    )


def test_a_request_with_a_misspelt_field_is_refused() -> None:
    with pytest.raises(msgspec.ValidationError, match="Object contains unknown field `arg`"):
        msgspec.json.decode(b'{"function": "f", "arg": [1]}', type=ComputeRequest)


# --- scalars -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("valtype", "value", "expected"),
    [
        ("i32", 5, 5),
        ("i32", -(2**31), -(2**31)),
        ("i32", 2**32 - 1, -1),  # unsigned spelling, two's complement
        ("i64", 2**63, -(2**63)),
        ("f64", 3, 3.0),
        ("f32", 0.5, 0.5),
    ],
)
def test_scalars_convert_to_what_wasmtime_takes(
    valtype: str, value: int | float, expected: int | float
) -> None:
    converted = scalar_param(valtype, value, "argument 0 of m.f", "$.args[0]")
    assert converted == expected
    assert type(converted) is type(expected)


@pytest.mark.parametrize(
    ("valtype", "value", "message"),
    [
        ("i32", 1.5, "argument 0 of m.f is an i32: got 1.5, not an integer - at `$.args[0]`"),
        (
            "i32",
            2**32,
            "argument 0 of m.f is an i32: got 4294967296, outside -2147483648..4294967295 - at `$.args[0]`",
        ),
        ("i64", True, "argument 0 of m.f is an i64: got True, not an integer - at `$.args[0]`"),
        ("f64", "1", "argument 0 of m.f is an f64: got '1', not a number - at `$.args[0]`"),
        ("f32", 1e39, "argument 0 of m.f is an f32: got 1e+39, too large (max 3.40282e+38) - at `$.args[0]`"),
        ("funcref", 1, "argument 0 of m.f is a funcref, which compute cannot pass (only i32, i64, f32, f64)"),
    ],
)
def test_a_bad_scalar_says_what_was_expected(valtype: str, value: object, message: str) -> None:
    with pytest.raises(ValidationError) as caught:
        scalar_param(valtype, value, "argument 0 of m.f", "$.args[0]")
    assert caught.value.errors == [message]


# --- planning a call ---------------------------------------------------------------------------

INTEGRATE = Signature(("i32", "i32"), ("f64",))
SCALE = Signature(("i32", "i32", "i32", "i32", "f64"), ("i32",))
GREET = Signature(("i32", "i32"), ("i32", "i32"))
MAKE = Signature(("i32",), ("i32",))


@pytest.mark.parametrize(
    ("sig", "arrays", "args", "at", "length", "expected"),
    [
        (INTEGRATE, 1, 0, "auto", None, "in_place"),  # no room for an output pair, arrays given
        (SCALE, 1, 1, "auto", 3, "out"),  # exactly one pair more than the inputs
        (GREET, 1, 0, "auto", None, "return"),  # returns (ptr, len)
        (MAKE, 0, 1, "auto", 4, "return"),  # returns a pointer, nothing else fits
        (GREET, 1, 0, "in_place", None, "in_place"),  # explicit beats auto
        (INTEGRATE, 1, 0, None, None, None),  # no result asked for
    ],
)
def test_auto_finds_where_the_result_is(
    sig: Signature, arrays: int, args: int, at: str | None, length: int | None, expected: str | None
) -> None:
    plan = plan_call("m.f", sig, arrays, args, at, length, 0)
    assert plan.at == expected
    assert plan.pointer_params == 2 * arrays + (2 if expected == "out" else 0)


@pytest.mark.parametrize(
    ("sig", "arrays", "args", "at", "length", "index", "message"),
    [
        (INTEGRATE, 0, 1, None, None, 0,
         "m.f(i32, i32) -> f64 takes 2 parameters, but the request passes 1: 1 arg - at `$.args`"),
        (INTEGRATE, 1, 0, "out", 3, 0,
         "m.f(i32, i32) -> f64 takes 2 parameters, but the request passes 4: "
         "1 array as 2 (ptr, len) values + 2 for the output buffer + 0 args - at `$.args`"),
        (SCALE, 1, 1, "out", None, 0, "the output buffer of m.f needs a length - at `$.result.length`"),
        (INTEGRATE, 1, 0, "in_place", None, 1,
         "result index 1 names no input array (1 given) - at `$.result.index`"),
        (INTEGRATE, 1, 0, "return", None, 0,
         "m.f(i32, i32) -> f64 does not return a buffer: `at: return` needs (ptr: i32, len: i32) "
         "or ptr: i32 results - at `$.result.at`"),
        (MAKE, 0, 1, "return", None, 0,
         "m.f returns only a pointer: give the result's length - at `$.result.length`"),
        (Signature(("f64", "f64"), ("f64",)), 1, 0, None, None, 0,
         "parameter 0 of m.f(f64, f64) -> f64 is f64, but arrays are passed as (ptr: i32, len: i32) pairs"),
        (Signature(("f64",), ("f64",)), 0, 1, "auto", None, 0,
         "cannot tell where the result of m.f(f64) -> f64 is: it takes no output buffer, returns no "
         "pointer and gets no arrays - set `at` in the result - at `$.result.at`"),
    ],
)  # fmt: skip
def test_a_call_that_does_not_fit_the_signature_is_refused(
    sig: Signature, arrays: int, args: int, at: str | None, length: int | None, index: int, message: str
) -> None:
    with pytest.raises(ValidationError) as caught:
        plan_call("m.f", sig, arrays, args, at, length, index)
    assert caught.value.errors == [message]


def test_signatures_read_like_wat() -> None:
    assert str(INTEGRATE) == "(i32, i32) -> f64"
    assert str(GREET) == "(i32, i32) -> (i32, i32)"
    assert str(Signature((), ())) == "() -> ()"
