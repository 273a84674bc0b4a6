"""A real OpenSSH server on 127.0.0.1 for the SSH target's tests: its own host key, an
authorised client key, and an ssh_config/known_hosts pair so that host-key checking stays on."""
from __future__ import annotations

import getpass
import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

SSHD = shutil.which("sshd") or "/usr/sbin/sshd"


@dataclass
class SSHServer:
    port: int
    root: Path
    config: Path  # client ssh_config with the alias below
    alias: str
    proc: subprocess.Popen
    user: str

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def unavailable_reason() -> str | None:
    if not Path(SSHD).is_file():
        return "sshd not installed (Debian: apt-get install openssh-server)"
    if not shutil.which("ssh") or not shutil.which("ssh-keygen"):
        return "OpenSSH client not installed"
    return None


def start_sshd(root: Path) -> SSHServer:
    root.mkdir(parents=True, exist_ok=True)
    os.chmod(root, 0o700)
    for name in ("host_key", "client_key"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(root / name)], check=True)
    (root / "authorized_keys").write_text((root / "client_key.pub").read_text())
    port = _free_port()
    user = getpass.getuser()
    (root / "sshd_config").write_text(f"""Port {port}
ListenAddress 127.0.0.1
HostKey {root / 'host_key'}
PidFile {root / 'sshd.pid'}
AuthorizedKeysFile {root / 'authorized_keys'}
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
PermitRootLogin prohibit-password
AllowUsers {user}
""")
    # sshd needs its privilege-separation directory
    Path("/run/sshd").mkdir(parents=True, exist_ok=True)
    host_pub = (root / "host_key.pub").read_text().split()
    (root / "known_hosts").write_text(f"[127.0.0.1]:{port} {host_pub[0]} {host_pub[1]}\n")
    alias = "edgekd-test-pi"
    (root / "ssh_config").write_text(f"""Host {alias}
  HostName 127.0.0.1
  Port {port}
  User {user}
  IdentityFile {root / 'client_key'}
  IdentitiesOnly yes
  UserKnownHostsFile {root / 'known_hosts'}
  StrictHostKeyChecking yes
""")
    log = open(root / "sshd.log", "w")
    proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(root / "sshd_config")], stdout=log, stderr=log)
    deadline = time.time() + 10
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"sshd exited: {(root / 'sshd.log').read_text()[-500:]}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            break
        except OSError:
            time.sleep(0.1)
    else:
        proc.kill()
        raise RuntimeError("sshd did not start listening")
    server = SSHServer(port, root, root / "ssh_config", alias, proc, user)
    p = subprocess.run(["ssh", "-F", str(server.config), "-o", "BatchMode=yes", alias, "--", "true"],
                       capture_output=True, text=True, timeout=30)
    if p.returncode != 0:
        server.stop()
        raise RuntimeError(f"cannot log in to the test sshd: {p.stderr.strip()}")
    return server
