"""Fixtures for the suites that use real outside parts: the binary's emulator on port 0."""
import os
import pathlib
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
BINARY = pathlib.Path(os.environ.get("BFE_BINARY", ROOT / "target" / "debug" / "bedrock-flow-exporter"))


def start_emulator(*args):
    """Starts `bedrock-flow-exporter emulate` on a free loopback port; returns (process, url)."""
    process = subprocess.Popen(
        [str(BINARY), "emulate", "--listen", "127.0.0.1:0", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    line = process.stdout.readline().strip()
    assert line.startswith("emulator listening on "), line
    return process, line.rsplit(" ", 1)[1]


@pytest.fixture
def emulator(tmp_path):
    scenario = tmp_path / "scenario.toml"
    scenario.write_text(
        """
seed = 5
[traffic]
history = 23
[outcomes]
failed = 0.3
timeout_secs = 30.0
[[flows]]
id = "SUPPORTTRI"
name = "support-triage"
template = "support_triage"
[[flows]]
id = "DOCBATCH01"
name = "doc-batch"
template = "doc_batch"
"""
    )
    process, url = start_emulator("--scenario", str(scenario))
    yield url
    process.terminate()
    process.wait(timeout=10)
