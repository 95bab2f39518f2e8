"""The web console in a real headless Chromium: `console_browser.mjs` drives it (log in,
create a publish-only user, see a real client with it in the clients list, publish from the
web client to mosquitto_sub, disconnect a client) and saves a screenshot of each page in
`target/console-screenshots/` (set TERN_SCREENSHOTS to change)."""

import os
import shutil
import subprocess
from pathlib import Path

from conftest import Broker

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]


def test_console_in_chromium(tmp_path):
    assert Path("/usr/bin/chromium").exists(), "Debian's chromium is needed (scripts/test installs it)"
    assert shutil.which("mosquitto_sub"), "mosquitto_sub is needed (scripts/test installs it)"
    shots = Path(os.environ.get("TERN_SCREENSHOTS", ROOT / "target" / "console-screenshots"))
    b = Broker(tmp_path).start()
    try:
        env = dict(os.environ, CONSOLE_URL=b.console_url + "/", ADMIN_PASSWORD=b.admin_password(),
                   MQTT_PORT=str(b.port), SCREENSHOTS=str(shots))
        run = subprocess.run(["node", str(HERE / "console_browser.mjs")], cwd=HERE, env=env,
                             capture_output=True, text=True, timeout=180)
        assert run.returncode == 0, run.stdout + run.stderr + "\n--- broker log ---\n" + b.log()[-4000:]
        assert "console browser test passed" in run.stdout
        for page in ("login", "overview", "clients", "access", "topics", "webclient"):
            assert (shots / f"{page}.png").stat().st_size > 0, page
    finally:
        b.stop()
