"""How values cross the host/guest boundary: element types, array bytes, scalar parameters.

Pure Python (no wasmtime), so the conversions and their error messages are unit-tested alone.
WebAssembly memory is little-endian; arrays are packed with the `array` module and byte-swapped
on a big-endian host.
"""

from __future__ import annotations

import array
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

from corral.errors import ModuleError, ValidationError

__all__ = [
    "ELEMENT_TYPES",
    "CallPlan",
    "Element",
    "Signature",
    "decode_elements",
    "element",
    "encode_elements",
    "plan_call",
    "scalar_param",
]

Number = int | float
_SWAP: Final = sys.byteorder != "little"
F32_MAX: Final = 3.4028234663852886e38


@dataclass(frozen=True, slots=True)
class Element:
    """One element type: its wire name, `array` typecode, size and alignment in bytes, range."""

    name: str
    typecode: str  # "" for utf8, which is bytes of a str
    size: int
    is_float: bool = False
    low: int = 0
    high: int = 0

    def describe_range(self) -> str:
        return f"{self.low}..{self.high}"


def _int(name: str, typecode: str, size: int, signed: bool) -> Element:
    bits = 8 * size
    low, high = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
    if array.array(typecode).itemsize != size:  # pragma: no cover - exotic platforms only
        raise RuntimeError(f"array typecode {typecode!r} is not {size} bytes on this platform")
    return Element(name, typecode, size, False, low, high)


ELEMENT_TYPES: Final[dict[str, Element]] = {
    e.name: e
    for e in (
        _int("i8", "b", 1, True),
        _int("u8", "B", 1, False),
        _int("i16", "h", 2, True),
        _int("u16", "H", 2, False),
        _int("i32", "i", 4, True),
        _int("u32", "I", 4, False),
        _int("i64", "q", 8, True),
        _int("u64", "Q", 8, False),
        Element("f32", "f", 4, True),
        Element("f64", "d", 8, True),
        Element("utf8", "", 1),
    )
}
TYPE_NAMES: Final = ", ".join(ELEMENT_TYPES)


def element(name: str, where: str) -> Element:
    """The element type called `name`; ValidationError listing the known ones otherwise."""
    found = ELEMENT_TYPES.get(name)
    if found is None:
        raise ValidationError(f"unknown element type {name!r}: use one of {TYPE_NAMES} - at `{where}`")
    return found


def encode_elements(kind: Element, data: Sequence[Number] | str, where: str) -> bytes:
    """Pack `data` as little-endian `kind` elements; ValidationError naming the bad element."""
    if kind.name == "utf8":
        if not isinstance(data, str):
            raise ValidationError(f"a utf8 array takes a string, got a list - at `{where}.data`")
        return data.encode()
    if isinstance(data, str):
        raise ValidationError(
            f"a {kind.name} array takes a list of numbers, got a string - at `{where}.data`"
        )
    try:
        packed = array.array(kind.typecode, data)
    except (TypeError, OverflowError):
        raise _bad_element(kind, data, where) or ValidationError(
            f"the data cannot be packed as {kind.name} - at `{where}.data`"
        ) from None
    if (
        kind.name == "f32"
        and not all(map(math.isfinite, packed))
        and (bad := _bad_element(kind, data, where))
    ):
        raise bad  # a finite value too large for f32 became inf; an inf or nan given as such is kept
    if _SWAP:  # pragma: no cover - big-endian hosts only
        packed.byteswap()
    return packed.tobytes()


def _bad_element(kind: Element, data: Sequence[Number], where: str) -> ValidationError | None:
    """Find the first element `kind` cannot hold and say why (the fast path only knows that one failed)."""
    for i, value in enumerate(data):
        at = f"`{where}.data[{i}]`"
        if not isinstance(value, int | float) or isinstance(value, bool):
            return ValidationError(f"element {i} is {value!r}, not a number - at {at}")
        if kind.is_float:
            if kind.name == "f32" and math.isfinite(value) and abs(value) > F32_MAX:
                return ValidationError(
                    f"element {i} is {value}, too large for f32 (max {F32_MAX:g}) - at {at}"
                )
        elif not isinstance(value, int):
            return ValidationError(f"element {i} is {value!r}, not an integer as {kind.name} needs - at {at}")
        elif not kind.low <= value <= kind.high:
            return ValidationError(
                f"element {i} is {value}, outside the {kind.name} range {kind.describe_range()} - at {at}"
            )
    return None


def decode_elements(kind: Element, raw: bytes, where: str) -> list[Number] | str:
    """Unpack little-endian `kind` elements; a utf8 buffer becomes a str."""
    if kind.name == "utf8":
        try:
            return raw.decode()
        except UnicodeDecodeError as exc:
            raise ModuleError(f"{where} is not valid UTF-8: {exc.reason} at byte {exc.start}") from None
    values: array.array[Any] = array.array(kind.typecode)
    values.frombytes(raw)
    if _SWAP:  # pragma: no cover - big-endian hosts only
        values.byteswap()
    result: list[Number] = values.tolist()
    return result


_PARAM_RANGES: Final = {"i32": (-(2**31), 2**32 - 1), "i64": (-(2**63), 2**64 - 1)}


def scalar_param(valtype: str, value: object, what: str, path: str) -> Number:
    """Check one scalar argument against its wasm parameter type and convert it.

    Integers may be given signed or unsigned (0..2**32-1 for i32); they reach the guest as
    two's complement. Floats accept integers. `what` names the argument, `path` its field.
    """
    if valtype in _PARAM_RANGES:
        low, high = _PARAM_RANGES[valtype]
        if not isinstance(value, int) or isinstance(value, bool):
            raise ValidationError(f"{what} is an {valtype}: got {value!r}, not an integer - at `{path}`")
        if not low <= value <= high:
            raise ValidationError(f"{what} is an {valtype}: got {value}, outside {low}..{high} - at `{path}`")
        bits = 32 if valtype == "i32" else 64
        return value - 2**bits if value >= 2 ** (bits - 1) else value
    if valtype in ("f32", "f64"):
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise ValidationError(f"{what} is an {valtype}: got {value!r}, not a number - at `{path}`")
        if valtype == "f32" and math.isfinite(value) and abs(value) > F32_MAX:
            raise ValidationError(f"{what} is an f32: got {value}, too large (max {F32_MAX:g}) - at `{path}`")
        return float(value)
    raise ValidationError(f"{what} is a {valtype}, which compute cannot pass (only i32, i64, f32, f64)")


@dataclass(frozen=True, slots=True)
class Signature:
    """An export's parameter and result types, as wasm type names."""

    params: tuple[str, ...]
    results: tuple[str, ...]

    def __str__(self) -> str:
        results = ", ".join(self.results)
        shown = f"({results})" if len(self.results) > 1 else results or "()"
        return f"({', '.join(self.params)}) -> {shown}"


@dataclass(frozen=True, slots=True)
class CallPlan:
    """How one call lays out its parameters and where its result comes from."""

    at: str | None  # None: no result buffer; else "out", "in_place" or "return"
    pointer_params: int  # leading i32 params taken by (ptr, len) pairs


def plan_call(
    site: str, sig: Signature, arrays: int, args: int, at: str | None, length: int | None, index: int
) -> CallPlan:
    """Resolve `at` ("auto" included) against the signature; ValidationError when they do not fit.

    Parameters are the input (ptr, len) pairs, then the output pair when `at` is "out", then the
    scalar args. "auto" picks "out" when the export has room for one more pair, else "return"
    when it returns (i32, i32), else "in_place" when there are arrays, else "return" for one i32.
    """
    inputs = 2 * arrays + args
    if at == "auto":
        at = _auto(site, sig, arrays, inputs)
    pairs = 2 * arrays + (2 if at == "out" else 0)
    _check_arity(site, sig, arrays, args, at, pairs + args)
    for i, param in enumerate(sig.params[:pairs]):
        if param != "i32":
            raise ValidationError(
                f"parameter {i} of {site}{sig} is {param}, "
                "but arrays are passed as (ptr: i32, len: i32) pairs"
            )
    _check_result(site, sig, arrays, at, length, index)
    return CallPlan(at, pairs)


def _auto(site: str, sig: Signature, arrays: int, inputs: int) -> str:
    if len(sig.params) == inputs + 2:
        return "out"
    if sig.results == ("i32", "i32"):
        return "return"
    if arrays:
        return "in_place"
    if sig.results == ("i32",):
        return "return"
    raise ValidationError(
        f"cannot tell where the result of {site}{sig} is: it takes no output buffer, returns no "
        "pointer and gets no arrays - set `at` in the result - at `$.result.at`"
    )


def _check_arity(site: str, sig: Signature, arrays: int, args: int, at: str | None, expected: int) -> None:
    if len(sig.params) == expected:
        return
    parts = [_count(arrays, "array") + f" as {2 * arrays} (ptr, len) values"] if arrays else []
    if at == "out":
        parts.append("2 for the output buffer")
    parts.append(_count(args, "arg"))
    raise ValidationError(
        f"{site}{sig} takes {_count(len(sig.params), 'parameter')}, but the request passes "
        f"{expected}: {' + '.join(parts)} - at `$.args`"
    )


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _check_result(
    site: str, sig: Signature, arrays: int, at: str | None, length: int | None, index: int
) -> None:
    if at == "out" and length is None:
        raise ValidationError(f"the output buffer of {site} needs a length - at `$.result.length`")
    if at == "in_place" and index >= arrays:
        raise ValidationError(
            f"result index {index} names no input array ({arrays} given) - at `$.result.index`"
        )
    if at == "return":
        if sig.results not in (("i32",), ("i32", "i32")):
            raise ValidationError(
                f"{site}{sig} does not return a buffer: `at: return` needs (ptr: i32, len: i32) "
                "or ptr: i32 results - at `$.result.at`"
            )
        if sig.results == ("i32",) and length is None:
            raise ValidationError(
                f"{site} returns only a pointer: give the result's length - at `$.result.length`"
            )
