"""MQTT.js (npm `mqtt`), protocol versions 4 (3.1.1) and 5, against a tern broker process."""

import subprocess
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


@pytest.mark.parametrize("version", ["4", "5"])
def test_mqttjs(broker, version):
    run = subprocess.run(
        ["node", str(HERE / "mqttjs.mjs"), str(broker.port), version],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=HERE,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout.count('"ok":true') == 5, run.stdout
