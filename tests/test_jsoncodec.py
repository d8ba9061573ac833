"""The hot-path JSON codec writes what the standard library writes, and reads what it reads."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest

from bridge import jsoncodec
from bridge.events import build_event, encode


def stdlib(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


def test_an_event_is_encoded_byte_for_byte_as_the_standard_library_does() -> None:
    event = build_event(
        id="0b7f1c9e-1f1a-5a77-8a0e-8f0f2b1c3d4e",
        store="eu-prod",
        source="pcm",
        status="failed",
        previous_status="started",
        sequence=3,
        time="2026-11-29T10:00:00.000Z",
        job={"id": "j-1", "type": "product-import", "meta": {"file": "katalog-é\u2028\x1f.csv"}},
        errors=[{"detail": 'line 3: bad price "12,5"', "row": 3}],
        file_locations=None,
    )
    assert encode(event) == stdlib(event)
    assert jsoncodec.loads(encode(event)) == event


@pytest.mark.parametrize(
    "value",
    [
        {"count": 2**70},  # past 64 bits: orjson refuses, the standard library writes it
        {1: "integer key"},
    ],
)
def test_values_orjson_refuses_are_written_by_the_standard_library(value: Any) -> None:
    assert jsoncodec.dumps(value) == stdlib(value)


def test_text_orjson_refuses_is_read_by_the_standard_library() -> None:
    assert jsoncodec.loads('{"n": 123456789012345678901234567890}') == {
        "n": 123456789012345678901234567890
    }
    assert math.isnan(jsoncodec.loads('{"x": NaN}')["x"])
    with pytest.raises(ValueError):
        jsoncodec.loads("{not json")


@pytest.mark.parametrize("number", [2**64 - 1, 2**64, -(2**63), -(2**63) - 1, 10**30])
def test_integers_at_and_past_64_bits_are_read_exactly(number: int) -> None:
    text = f'{{"id": "job-1", "meta": {{"records": {number}}}}}'
    assert jsoncodec.loads(text) == {"id": "job-1", "meta": {"records": number}}
    assert jsoncodec.loads(text.encode()) == json.loads(text)
