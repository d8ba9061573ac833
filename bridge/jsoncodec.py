"""JSON on the delivery hot path: orjson (a tenth of the standard library's time to encode an
event, a third to decode one), with the standard library for the rare value orjson refuses
or would read differently.

Both write the same compact UTF-8 for what events hold (strings, integers, booleans, null,
lists and objects); floats may be spelt differently (`0.00001` for `1e-05`), which is the
same JSON number.
"""

from __future__ import annotations

import json
import re
from typing import Any

import orjson


def dumps(value: Any) -> bytes:
    """Compact UTF-8 JSON: `json.dumps(value, separators=(",", ":"), ensure_ascii=False)`."""
    try:
        return orjson.dumps(value)
    except TypeError:  # orjson.JSONEncodeError: integers past 64 bits, keys that are not str
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


# 19 digits in a row may be an integer past 64 bits, which orjson would read as a float: such
# text goes to the standard library (so may a long digit run inside a string: only slower).
_LONG_DIGITS = re.compile(r"\d{19}")
_LONG_DIGITS_BYTES = re.compile(rb"\d{19}")


def loads(text: str | bytes) -> Any:
    """`json.loads`; raises ValueError on text that is not JSON."""
    if isinstance(text, str):
        exact = _LONG_DIGITS.search(text) is None
    else:
        exact = _LONG_DIGITS_BYTES.search(text) is None
    if exact:
        try:
            return orjson.loads(text)
        except orjson.JSONDecodeError:  # NaN and Infinity literals
            pass
    return json.loads(text)
