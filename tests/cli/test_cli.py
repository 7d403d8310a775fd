"""The CLI's promised interface: `schema`, `bench log -o json`, exit codes."""

from __future__ import annotations

import asyncio
import json
import sys

from events.names import DNS1123_LABEL

CLI = [sys.executable, "-m", "virtbus"]


async def run(*args: str, wait_s: float = 120) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        *CLI, *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), wait_s)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_schema_prints_both_unions_as_json_schema() -> None:
    code, out, _ = await run("schema")
    assert code == 0
    doc = json.loads(out)
    assert {"StartVM", "ApplyVM", "MigrateVM"} <= set(doc["commands"]["$defs"])
    assert doc["events"]["$ref"] == "#/$defs/Envelope"
    assert "VMScheduled" in doc["events"]["$defs"]
    name = doc["commands"]["$defs"]["StartVM"]["properties"]["name"]
    assert name["pattern"] == DNS1123_LABEL


async def test_schema_of_an_unknown_part_is_a_usage_error() -> None:
    code, out, err = await run("schema", "widgets")
    assert (code, out) == (2, "")
    assert "unknown 'widgets'" in err


async def test_unknown_verb_is_a_usage_error() -> None:
    code, _, _ = await run("frobnicate")
    assert code == 2


async def test_bench_log_prints_one_json_object_with_the_ratios() -> None:
    code, out, err = await run("bench", "log", "--events", "400", "--batch", "20", "-o", "json")
    assert code == 0, err
    result = json.loads(out)  # stdout holds the JSON and nothing else
    keys = ("append_eps", "append_baseline_eps", "replay_eps", "replay_baseline_eps",
            "replay_lean_pull_eps")  # fmt: skip
    for key in keys:
        assert result[key] > 0, key
    assert result["replayed"] >= 400
    assert result["append_ratio"] == result["append_eps"] / result["append_baseline_eps"]
