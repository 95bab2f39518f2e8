"""docs/deploy.md, run: every command of its `sh` blocks, in order, in a sandbox standing for
`/`, with the mechanical changes the guide's last section lists. The cloud broker runs from
the installed unit's own ExecStart line; boards' users, a retained message, the console
password, a backup and its restore, an upgrade, and the home broker bridged to the cloud
are all checked with real clients (tern pub/sub, paho)."""

import os
import re
import shlex
import shutil
import signal
import subprocess
import time
from pathlib import Path

import paho.mqtt.client as mqtt

from conftest import ROOT, TERN, free_port, wait_for

GUIDE = ROOT / "docs" / "deploy.md"


def commands():
    text = GUIDE.read_text()
    for block in re.findall(r"```sh\n(.*?)```", text, re.S):
        for line in block.splitlines():
            if line.strip() and not line.lstrip().startswith("#"):
                yield line


class Sandbox:
    def __init__(self, root):
        self.root = root
        self.services = {}  # name -> process
        self.ports = {"1883": str(free_port()), "8883": str(free_port()), "443": str(free_port())}
        self.cloud_plain = self.ports["1883"]
        (root / "etc").mkdir(parents=True)
        for f in ("passwd", "group", "shadow", "gshadow", "login.defs"):
            if Path("/etc", f).exists():
                shutil.copy(Path("/etc", f), root / "etc" / f)
        for d in ("usr/local/bin", "etc/systemd/system", "var/lib", "var/backups", "usr/sbin"):
            (root / d).mkdir(parents=True, exist_ok=True)
        self.user = os.getuid()
        self.log = root / "tern.log"

    def rewrite(self, line):
        line = line.replace("sudo -u tern ", "").replace("sudo ", "")
        line = line.replace("target/release/tern", str(TERN))
        for path in ("/usr/local/bin", "/etc/tern", "/etc/systemd/system", "/var/lib/tern", "/var/backups"):
            line = line.replace(path, f"{self.root}{path}")
        line = line.replace("-C /var/lib ", f"-C {self.root}/var/lib ")
        line = line.replace("-o tern -g tern", f"-o {self.user} -g {self.user}")
        line = line.replace("deploy/", f"{ROOT}/deploy/")
        line = line.replace("-p 1883", f"-p {self.cloud_plain}")
        if line.startswith("useradd "):
            line = line.replace("useradd ", f"useradd --root {self.root} ", 1)
        if line.startswith("tern "):
            line = f"{TERN} " + line[len("tern "):]
        line = re.sub(r"\| tern ", f"| {TERN} ", line)
        return line

    def fix_config(self):
        """Ports to free loopback ones; ACME toward nothing (no traffic leaves the machine);
        a home bridge toward the cloud broker's loopback listener."""
        config = self.root / "etc" / "tern" / "tern.toml"
        text = config.read_text()
        for port, free in self.ports.items():
            text = text.replace(f'0.0.0.0:{port}"', f'127.0.0.1:{free}"').replace(f'127.0.0.1:{port}"', f'127.0.0.1:{free}"')
        if "directory =" not in text:
            text = text.replace("[tls.acme]\n", '[tls.acme]\ndirectory = "https://127.0.0.1:9/directory"\n')
        text = re.sub(r'url = "mqtts://[^"]+"', f'url = "mqtt://127.0.0.1:{self.cloud_plain}"', text)
        config.write_text(text)

    def exec_start(self):
        unit = (self.root / "etc" / "systemd" / "system" / "tern.service").read_text()
        line = re.search(r"^ExecStart=(.*)$", unit, re.M).group(1)
        return [self.rewrite(part) if part.startswith("/") else part for part in shlex.split(line)]

    def start(self):
        self.fix_config()
        argv = self.exec_start() + ["--console", "off"]
        proc = subprocess.Popen(argv, stdout=open(self.log, "a"), stderr=subprocess.STDOUT, cwd=self.root)
        self.services["tern"] = proc
        wait_for(lambda: self.log.read_text().count("tern broker running") > self.starts, timeout=20,
                 what="the broker to start")
        self.starts += 1

    starts = 0

    def stop(self):
        proc = self.services.pop("tern", None)
        if proc and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(10)

    def run(self, line):
        if line.startswith("systemctl daemon-reload"):
            unit = self.root / "etc" / "systemd" / "system" / "tern.service"
            # Verify the unit as systemd would load it, its ExecStart pointing into the sandbox.
            checked = self.root / "tern.service"
            checked.write_text(unit.read_text().replace("/usr/local/bin/tern", str(self.root / "usr/local/bin/tern")))
            run = subprocess.run(["systemd-analyze", "verify", str(checked)], capture_output=True, text=True)
            problems = [l for l in (run.stdout + run.stderr).splitlines()
                        if "tern.service" in l and "User" not in l and "Group" not in l]
            assert run.returncode == 0 or not problems, run.stdout + run.stderr
            return ""
        if line.startswith("systemctl "):
            action = line.split()[1]
            if action in ("stop", "restart"):
                self.stop()
            if action in ("start", "restart", "enable"):
                self.start()
            return ""
        run = subprocess.run(line, shell=True, capture_output=True, text=True, timeout=60, cwd=self.root)
        assert run.returncode == 0, f"{line}\n{run.stdout}{run.stderr}"
        return run.stdout


def test_every_command_of_the_deploy_guide(tmp_path):
    assert shutil.which("systemd-analyze"), "systemd-analyze is needed (Debian's systemd)"
    box = Sandbox(tmp_path / "root")
    lines = list(commands())
    assert len(lines) >= 20
    home_section = lines.index(next(l for l in lines if "deploy/home.toml" in l))
    outputs = []
    try:
        for line in lines[:home_section]:
            outputs.append((line, box.run(box.rewrite(line))))
        # What the steps produced.
        assert "tern:" in (box.root / "etc" / "passwd").read_text()
        assert any("board1" in out for line, out in outputs if "user list" in line)
        assert any(out.strip() == "sensors/board1/temp 21.5" for line, out in outputs if "tern sub" in line)
        data = box.root / "var" / "lib" / "tern"
        assert (data / "admin.toml").exists() and (data / "users.toml").exists()
        assert (box.root / "var" / "backups" / "tern-data.tgz").stat().st_size > 0
        log = box.log.read_text()
        assert "ACME certificates" in log and 'domains=["broker.your-domain.net"]' in log
        # The restarted (upgraded) broker still holds the retained message.
        got = subprocess.run([str(TERN), "sub", "-h", "127.0.0.1", "-p", box.cloud_plain, "-u", "board2",
                              "-P", "board2-long-password", "-t", "sensors/#", "-v", "-C", "1", "-W", "10"],
                             capture_output=True, text=True, timeout=30)
        assert got.stdout.strip() == "sensors/board1/temp 21.5", got.stdout + got.stderr

        # The home: a second sandbox, bridged to the cloud one.
        home = Sandbox(tmp_path / "home")
        home.cloud_plain = box.cloud_plain
        for line in lines[:home_section]:
            if any(step in line for step in ("useradd", "install -m 755", "install -d", "tern.service", "daemon-reload")):
                home.run(home.rewrite(line))
        try:
            for line in lines[home_section:]:
                home.run(home.rewrite(line))
            wait_for(lambda: "bridge connected" in home.log.read_text(), timeout=30, what="the home's bridge")
            home_port = home.ports["1883"]
            received = []
            cloud = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="cloud-viewer")
            cloud.username_pw_set("home", "change-this-home-password")
            cloud.on_message = lambda c, u, m: received.append((m.topic, m.payload))
            cloud.connect("127.0.0.1", int(box.cloud_plain))
            cloud.loop_start()
            cloud.subscribe("site1/#", 1)
            time.sleep(0.5)
            publish = subprocess.run([str(TERN), "pub", "-h", "127.0.0.1", "-p", home_port, "-u", "kitchen", "-P",
                                      "kitchen-long-password", "-t", "sensors/kitchen/temp", "-m", "22", "-q", "1"],
                                     capture_output=True, text=True, timeout=30)
            assert publish.returncode == 0, publish.stderr
            wait_for(lambda: ("site1/sensors/kitchen/temp", b"22") in received, what="the kitchen in the cloud")
            cloud.disconnect()
            cloud.loop_stop()
        finally:
            home.stop()
    finally:
        box.stop()
