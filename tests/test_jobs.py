"""The job model: every seed example parses, every timestamp and status variant normalises."""

from __future__ import annotations

import json
from datetime import UTC
from pathlib import Path

import pytest

from bridge.jobs import (
    JobParseError,
    format_timestamp,
    normalise_status,
    parse_pcm_job,
    parse_timestamp,
    parse_v2_job,
)

SEEDS = json.loads((Path(__file__).parent / "fixtures" / "seed_examples.json").read_text())


def seed_records(prefix: str) -> list[dict]:
    [name] = [n for n in SEEDS if n.startswith(prefix)]
    records = []
    for example in SEEDS[name]:
        data = example.get("data")
        records.extend(data if isinstance(data, list) else [data] if data else [])
    return records


@pytest.mark.parametrize("prefix", ["000", "001", "002"])
def test_every_pcm_seed_example_parses(prefix):
    records = seed_records(prefix)
    assert records
    for record in records:
        if record["id"] == "string":  # the schema placeholder of 001, not an example
            continue
        job = parse_pcm_job(record)
        assert job.source == "pcm"
        assert job.status in {"pending", "started", "success"}
        assert job.created_at is not None and job.created_at.tzinfo is UTC


def test_go_time_format_of_seed_000():
    [job, _] = [parse_pcm_job(r) for r in seed_records("000")]
    assert job.id == "2950cae3-1050-4c43-9fbd-2aa60dc5c249"
    assert job.type == "child-products"
    assert format_timestamp(job.completed_at) == "2023-10-18T11:39:46.595Z"
    # updated_at did not move at completion: the quirk the change detector must survive
    assert job.updated_at == job.created_at < job.completed_at


def test_started_job_with_null_started_at_and_meta_passthrough():
    started = next(r for r in seed_records("001") if r["attributes"]["status"] == "started")
    job = parse_pcm_job(started)
    assert job.status == "started" and job.started_at is None and job.completed_at is None
    assert job.meta == {"x_request_id": "7e832a26-d615-4305-b26a-e33c9c2fc06a"}
    export = next(r for r in seed_records("001") if r["attributes"]["type"] == "product-export")
    assert parse_pcm_job(export).meta["filter"] == "eq(sku,product-1)"


def test_v2_seed_examples_parse():
    jobs = [parse_v2_job(r) for r in seed_records("004")]
    assert {j.id for j in jobs} == {
        "00000000-0000-0000-0000-000000000000",
        "974c9db4-38da-4dbf-90c2-33eed5f3e77c",
    }
    job = jobs[1]
    assert (job.source, job.type, job.status) == ("v2", "order_export", "failed")
    assert job.error == "No results matched the supplied filter"
    assert job.file_href is None  # "" means no file
    assert format_timestamp(job.created_at) == "2018-10-04T11:08:49.156Z"
    assert job.created_at.microsecond == 156490  # nanoseconds truncated, not rounded away


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2024-02-20T22:13:41.99Z", "2024-02-20T22:13:41.990Z"),
        ("2024-01-05T13:46:41.695Z", "2024-01-05T13:46:41.695Z"),
        ("2020-09-22T09:00:00", "2020-09-22T09:00:00.000Z"),
        ("2023-10-18 11:39:46.595 +0000 UTC", "2023-10-18T11:39:46.595Z"),
        ("2018-10-04T11:08:49.156490335Z", "2018-10-04T11:08:49.156Z"),
        ("2024-01-05T15:27:23+02:00", "2024-01-05T13:27:23.000Z"),
        ("2024-01-05T15:27:23.5-0130", "2024-01-05T16:57:23.500Z"),
        ("0001-01-01T00:00:00Z", None),
        ("", None),
        (None, None),
    ],
)
def test_timestamp_variants(text, expected):
    assert format_timestamp(parse_timestamp(text)) == expected


@pytest.mark.parametrize("bad", ["yesterday", "2024-13-01T00:00:00Z", 1700000000, "2024-01-05"])
def test_bad_timestamps_raise(bad):
    with pytest.raises(ValueError):
        parse_timestamp(bad)


@pytest.mark.parametrize(
    ("word", "status"),
    [
        ("pending", "pending"),
        ("PENDING", "pending"),
        ("processing", "started"),
        ("STARTED", "started"),
        ("complete", "success"),
        ("SUCCESS", "success"),
        ("FAILED", "failed"),
        ("cancelled", "cancelled"),
    ],
)
def test_status_words(word, status):
    assert normalise_status(word) == status


def test_unknown_job_type_and_extra_fields_pass_through():
    record = {
        "type": "pim-job",
        "id": "abc",
        "attributes": {
            "type": "catalog-teleport",
            "status": "pending",
            "created_at": "2024-01-05T13:46:41.695Z",
            "updated_at": "2024-01-05T13:46:41.695Z",
            "shiny": True,
        },
        "meta": {"new_thing": [1, 2]},
    }
    job = parse_pcm_job(record)
    assert job.type == "catalog-teleport"
    assert job.meta == {"new_thing": [1, 2]}


@pytest.mark.parametrize(
    ("record", "needle"),
    [
        ({"id": "j-1", "attributes": {"type": "x", "status": "???"}}, "unknown status"),
        (
            {"id": "j-1", "attributes": {"type": "x", "status": "pending", "created_at": "soon"}},
            "unrecognised timestamp",
        ),
        ({"id": "j-1"}, "attributes"),
        ({"id": "j-1", "attributes": {"status": "pending"}}, "attributes.type"),
    ],
)
def test_unparseable_pcm_record_names_the_job(record, needle):
    with pytest.raises(JobParseError) as info:
        parse_pcm_job(record)
    assert info.value.job_id == "j-1"
    assert "j-1" in str(info.value) and needle in str(info.value)


def test_record_without_id_and_bad_v2_record():
    with pytest.raises(JobParseError, match="no string `id`"):
        parse_pcm_job(["not", "a", "record"])
    with pytest.raises(JobParseError, match="v-9"):
        parse_v2_job({"id": "v-9", "job_type": "order_export", "status": "exploded"})


def test_to_dict_and_file_locations():
    export = parse_pcm_job(
        {
            "id": "e1",
            "attributes": {
                "type": "product-export",
                "status": "success",
                "created_at": "2024-01-05T15:27:23.161Z",
                "updated_at": "2024-01-05T15:27:23.65Z",
                "started_at": "2024-01-05T15:27:23.65Z",
                "completed_at": "2024-01-05T15:27:23.663Z",
            },
            "meta": {"file_locations": ["https://files/e1.csv"]},
        }
    )
    assert export.file_locations() == ["https://files/e1.csv"]
    assert export.to_dict()["completed_at"] == "2024-01-05T15:27:23.663Z"
    v2 = parse_v2_job(
        {"id": "o1", "job_type": "order_export", "status": "complete", "link": {"href": ""}}
    )
    assert v2.file_locations() == ["/v2/jobs/o1/file"]
