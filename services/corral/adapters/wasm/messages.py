"""The wire messages of a hosted WebAssembly module (`<prefix>.mod.<module>.compute`, reload).

    {"function": "step", "args": [1.0, 0.5]}
    {"function": "integrate", "arrays": [{"type": "f64", "data": [1, 2, 3]}],
     "result": {"type": "f64", "length": 3}}

A reply payload is `{"returns": [...], "result": ...}`: `returns` holds what the export returned
(ints and floats), `result` the buffer read back when the request asked for one.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

from corral.adapters.wasm.abi import ELEMENT_TYPES, TYPE_NAMES

__all__ = ["ComputeReply", "ComputeRequest", "ReloadReply", "ResultSpec", "TypedArray"]

Number = int | float
ResultAt = Literal["auto", "out", "in_place", "return"]


def _check_type(name: str) -> None:
    if name not in ELEMENT_TYPES:
        raise ValueError(f"unknown element type {name!r}: use one of {TYPE_NAMES}")


class TypedArray(msgspec.Struct, forbid_unknown_fields=True):
    """An array argument: `{"type": "f64", "data": [1, 2]}`, or `{"type": "utf8", "data": "text"}`."""

    type: str
    data: list[Number] | str

    def __post_init__(self) -> None:
        _check_type(self.type)
        if (self.type == "utf8") != isinstance(self.data, str):
            wanted = "a string" if self.type == "utf8" else "a list of numbers"
            raise ValueError(f"a {self.type} array takes {wanted} as data")


class ResultSpec(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Which buffer to read back after the call, and as what.

    `at`: "out" (the host allocates `length` elements and passes them as one more (ptr, len)
    pair after the inputs), "in_place" (input array `index`, after the call), "return" (the
    export returns (ptr, len), or a ptr with `length` given; the host frees it after reading),
    or "auto" (see the ABI in the package docstring).
    """

    type: str
    length: Annotated[int, msgspec.Meta(ge=0)] | None = None
    at: ResultAt = "auto"
    index: Annotated[int, msgspec.Meta(ge=0)] = 0

    def __post_init__(self) -> None:
        _check_type(self.type)


class ComputeRequest(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    function: Annotated[str, msgspec.Meta(min_length=1)]
    args: list[Number] = []
    arrays: list[TypedArray] = []
    result: ResultSpec | None = None


class ComputeReply(msgspec.Struct, omit_defaults=True):
    returns: list[Number]
    result: list[Number] | str | None = None


class ReloadReply(msgspec.Struct):
    """What a reload loaded: the same file, re-read, as version `version` of the module."""

    module: str
    file: str
    version: int
    sha256: str
    exports: list[str]
