"""Benchmark targets: devices described by TOML files (`edgekd targets list`),
and the transports that reach them: local (this machine, CPU or CUDA), ssh (a Raspberry Pi or
any Linux box, through the OpenSSH client) and adb (an Android phone, through the adb client).

A transport does four things: run a command on the device, copy a file there and back, and
give a private working directory that is removed afterwards. Nothing unquoted reaches a remote
shell: commands are argument lists, joined with shlex.join where a shell is unavoidable.

Where a target comes from, first match wins: an explicit path to a .toml file; the user's
config directory ($XDG_CONFIG_HOME/edgekd/targets, default ~/.config/edgekd/targets; a file
there named like a built-in overrides it); the built-ins, the repository's top-level targets/
folder shipped inside the package as edgekd._targets. The working directory is never searched:
a checked-out folder with its own targets/ must not shadow a built-in.
"""
from __future__ import annotations

import contextlib
import importlib.resources
import os
import re
import shlex
import shutil
import subprocess
import tempfile
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from .errors import BenchError, ConfigError, TargetError, last_line

KINDS = ("local", "ssh", "adb")
DEVICES = ("cpu", "cuda")
RUNTIME_CHOICES = {"onnx": ("onnxruntime",), "tflite": ("litert", "tflite-runtime", "tflite"),
                   "torch": ("torch",)}
# What the phone's benchmark tools may run a model with (adb targets only). Each name maps to fixed
# command-line flags in edgekd.bench; nothing from the target file reaches the tool's command line.
TFLITE_DELEGATES = ("cpu", "xnnpack", "gpu", "nnapi")
ONNX_EXECUTION_PROVIDERS = ("cpu", "xnnpack", "nnapi")
BUILTIN = {"local-cpu": {"kind": "local", "description": "the host CPU, one thread", "threads": 1}}
# ssh options that would switch off host-key checking: refused, whatever the target file says
UNSAFE_SSH = {"stricthostkeychecking": {"no", "off", "false", "accept-new"},
              "userknownhostsfile": {"/dev/null", "none"}, "globalknownhostsfile": {"/dev/null", "none"}}
# ssh options a target file may set freely: connection, authentication and host-key settings
# that run nothing on this machine. Anything else (ProxyCommand, LocalCommand,
# KnownHostsCommand, PKCS11Provider, Match exec, Include, ... and options edgekd does not know)
# could run a local command, so it needs `--allow-local-commands` on the command line.
SAFE_SSH = {k.lower() for k in (
    "AddressFamily", "BatchMode", "BindAddress", "BindInterface", "CASignatureAlgorithms", "CertificateFile",
    "CheckHostIP", "Ciphers", "Compression", "ConnectionAttempts", "ConnectTimeout", "ControlMaster",
    "ControlPath", "ControlPersist", "EscapeChar", "FingerprintHash", "ForwardAgent",
    "GlobalKnownHostsFile", "GSSAPIAuthentication", "GSSAPIDelegateCredentials", "HashKnownHosts", "Host",
    "HostbasedAcceptedAlgorithms", "HostbasedAuthentication", "HostKeyAlgorithms", "HostKeyAlias",
    "HostName", "IdentitiesOnly", "IdentityFile", "IPQoS", "KbdInteractiveAuthentication",
    "KexAlgorithms", "LogLevel", "MACs", "NumberOfPasswordPrompts", "PasswordAuthentication", "Port",
    "PreferredAuthentications", "ProxyJump", "PubkeyAcceptedAlgorithms", "PubkeyAcceptedKeyTypes",
    "PubkeyAuthentication", "RekeyLimit", "RequestTTY", "RequiredRSASize", "SendEnv", "ServerAliveCountMax",
    "ServerAliveInterval", "SetEnv", "StrictHostKeyChecking", "TCPKeepAlive", "UpdateHostKeys", "User",
    "UserKnownHostsFile", "VerifyHostKeyDNS")}


class TargetFileError(TargetError):
    """A target file that is malformed or names a bad value: the bench cannot start."""

    exit_code = 1


@dataclass(frozen=True)
class Target:
    name: str
    kind: str
    description: str = ""
    threads: int = 1
    device: str = "cpu"
    runtimes: dict = field(default_factory=lambda: {"onnx": "onnxruntime", "tflite": "litert", "torch": "torch"})
    warmup: int = 20
    min_runs: int = 300
    min_seconds: float = 3.0
    timeout_s: float = 900.0
    batch_sizes: tuple = (1,)
    # ssh
    host: str | None = None
    port: int | None = None
    user: str | None = None
    python: str = "python3"
    remote_tmp: str = "/tmp"
    ssh_config: str | None = None
    identity_file: str | None = None
    connect_timeout_s: int = 10
    ssh_options: tuple = ()
    # adb
    serial: str | None = None
    adb: str = "adb"
    benchmark_binary: str | None = None
    perf_test_binary: str | None = None
    remote_dir: str = "/data/local/tmp"
    taskset: str | None = None
    tflite_delegate: str = "cpu"
    onnx_execution_provider: str = "cpu"
    source: str = "built-in"
    # Set from the command line only (`--allow-local-commands`), never from a target file.
    allow_local_commands: bool = False

    def local_commands(self) -> list[str]:
        """What in this target could run a command on this machine (ssh options outside the
        safe list, an ssh_config other than the user's own with such keywords, an adb client
        other than `adb` on the PATH)."""
        found = []
        if self.kind == "ssh":
            found += [f"ssh option {o!r}" for o in self.ssh_options if _ssh_key(o)[0] not in SAFE_SSH]
            if self.ssh_config:
                found += _ssh_config_commands(Path(self.ssh_config).expanduser())
        if self.kind == "adb" and self.adb != "adb":
            found.append(f"adb client {self.adb!r} (not the `adb` on the PATH)")
        return found

    def check_local_commands(self) -> None:
        found = self.local_commands()
        if found and not self.allow_local_commands:
            raise TargetFileError(f"{self.source}: {found[0]} could run a command on this machine; refused",
                                  hint="if you trust this target file, rerun with --allow-local-commands")

    def describe(self) -> str:
        """Where the target points, without checking or reaching it."""
        cls = {"ssh": SSHTransport, "adb": ADBTransport}.get(self.kind, LocalTransport)
        return cls.describe(cls.__new__(cls)._bind(self))

    def transport(self) -> "Transport":
        self.check_local_commands()
        if self.kind == "ssh":
            return SSHTransport(self)
        if self.kind == "adb":
            return ADBTransport(self)
        return LocalTransport(self)


def _fail(src: str, field_name: str, msg: str) -> TargetFileError:
    return TargetFileError(f"{src}: field {field_name!r} {msg}")


_INT = {"threads": 1, "warmup": 0, "min_runs": 1, "port": 1, "connect_timeout_s": 1}
_NUM = {"min_seconds": 0, "timeout_s": 1}
_STR = ("description", "host", "user", "python", "remote_tmp", "ssh_config", "identity_file",
        "serial", "adb", "benchmark_binary", "perf_test_binary", "remote_dir", "taskset", "kind", "device",
        "tflite_delegate", "onnx_execution_provider")


def parse_ssh_url(url: str) -> tuple[str | None, str, int | None]:
    """`ssh://user@host:port` -> (user, host, port); plain `host` or `user@host` pass through."""
    rest = url[len("ssh://"):] if url.startswith("ssh://") else url
    user = None
    if "@" in rest:
        user, rest = rest.rsplit("@", 1)
    port = None
    if url.startswith("ssh://") and rest.count(":") == 1:
        rest, p = rest.split(":")
        if not p.isdigit():
            raise ValueError(f"port {p!r} is not a number")
        port = int(p)
    return user, rest.strip("[]"), port


def target_from_dict(name: str, raw: dict, source: str) -> Target:
    known = {f for f in Target.__dataclass_fields__ if f not in ("name", "source", "allow_local_commands")}
    for key in raw:
        if key not in known:
            raise _fail(source, key, f"is not a target field; known fields: {', '.join(sorted(known))}")
    kind = raw.get("kind")
    if kind not in KINDS:
        raise _fail(source, "kind", f"is {kind!r}; allowed: {', '.join(KINDS)}")
    for key, lo in _INT.items():
        v = raw.get(key)
        if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < lo):
            raise _fail(source, key, f"must be an integer >= {lo}, got {v!r}")
    for key, lo in _NUM.items():
        v = raw.get(key)
        if v is not None and (not isinstance(v, (int, float)) or isinstance(v, bool) or v < lo):
            raise _fail(source, key, f"must be a number >= {lo}, got {v!r}")
    for key in _STR:
        if key in raw and not isinstance(raw[key], str):
            raise _fail(source, key, f"must be a string, got {raw[key]!r}")
    if raw.get("device", "cpu") not in DEVICES:
        raise _fail(source, "device", f"is {raw['device']!r}; allowed: {', '.join(DEVICES)}")
    out = dict(raw)
    bs = raw.get("batch_sizes", [1])
    if not isinstance(bs, list) or not bs or not all(isinstance(b, int) and b >= 1 for b in bs):
        raise _fail(source, "batch_sizes", f"must be a list of integers >= 1, got {bs!r}")
    out["batch_sizes"] = tuple(sorted(set(bs) | {1}))
    runtimes = dict(Target.__dataclass_fields__["runtimes"].default_factory())
    rts = raw.get("runtimes") or {}
    if not isinstance(rts, dict):
        raise _fail(source, "runtimes", f"must be a table, got {rts!r}")
    for fmt, rt in rts.items():
        if fmt not in RUNTIME_CHOICES or rt not in RUNTIME_CHOICES[fmt]:
            allowed = "; ".join(f"{k} = {' | '.join(v)}" for k, v in RUNTIME_CHOICES.items())
            raise _fail(source, f"runtimes.{fmt}", f"is {rt!r}; allowed: {allowed}")
        runtimes[fmt] = rt
    out["runtimes"] = runtimes
    opts = raw.get("ssh_options", [])
    if not isinstance(opts, list) or not all(isinstance(o, str) and _ssh_key(o)[0] for o in opts):
        raise _fail(source, "ssh_options", f"must be a list of 'Key=Value' strings, got {opts!r}")
    for o in opts:
        if _disables_host_keys(*_ssh_key(o)):
            raise _fail(source, "ssh_options", f"{o!r} would switch off host-key checking; add the "
                        "host's key to known_hosts instead (ssh-keyscan, then check its fingerprint)")
    out["ssh_options"] = tuple(opts)
    if kind == "ssh":
        if not raw.get("host"):
            raise _fail(source, "host", "is required for kind 'ssh' (an ssh-config alias, user@host or "
                        "ssh://user@host:port)")
        try:
            user, host, port = parse_ssh_url(raw["host"])
        except ValueError as e:
            raise _fail(source, "host", str(e)) from None
        if host.startswith("-") or not host:
            raise _fail(source, "host", f"{raw['host']!r} is not a host name")
        if (raw.get("user") or user or "").startswith("-"):
            raise _fail(source, "user", f"{raw.get('user') or user!r} is not a user name")
        out["host"], out["user"] = host, raw.get("user") or user
        out["port"] = raw.get("port") or port
    if kind == "adb" and raw.get("taskset") is not None:
        if not re.fullmatch(r"[0-9a-fA-F]{1,16}", raw["taskset"]) or int(raw["taskset"], 16) == 0:
            raise _fail(source, "taskset", f"must be a non-zero hex CPU mask such as 'f0', got {raw['taskset']!r}")
    for key, allowed in (("tflite_delegate", TFLITE_DELEGATES), ("onnx_execution_provider", ONNX_EXECUTION_PROVIDERS)):
        if key in raw and raw[key] not in allowed:
            raise _fail(source, key, f"is {raw[key]!r}; allowed: {', '.join(allowed)}")
        if kind != "adb" and raw.get(key, "cpu") != "cpu":
            raise _fail(source, key, f"applies to kind 'adb' only, not {kind!r}")
    if kind != "ssh" and raw.get("host"):
        raise _fail(source, "host", f"applies to kind 'ssh' only, not {kind!r}")
    return Target(name=name, source=source, **out)


def _ssh_key(option: str) -> tuple[str, str]:
    """(lower-case keyword, value) of an ssh option in `Key=value` or `Key value` form, as ssh
    itself splits it; ("", "") when there is no keyword."""
    m = re.match(r"\s*([A-Za-z0-9]+)\s*(?:=\s*|\s+)(.*)$", option)
    if not m:
        return ("", "")
    return m.group(1).lower(), m.group(2).strip()


def _disables_host_keys(key: str, value: str) -> bool:
    v = value.strip().strip("'\"").strip()
    if key in ("userknownhostsfile", "globalknownhostsfile"):
        # any of the files being /dev/null (however the path is spelled) or none
        for f in v.split():
            f = os.path.expanduser(f.strip("'\""))
            if f.lower() == "none" or (f.startswith("/") and os.path.normpath("/" + f.lstrip("/")) == "/dev/null"):
                return True
        return False
    return v.lower() in UNSAFE_SSH.get(key, ())


def _ssh_config_commands(path: Path) -> list[str]:
    """Keywords of an ssh_config file (not the user's own ~/.ssh/config) that could run a
    local command or pull in other files; the file is read, never executed."""
    try:
        if path.resolve() == (Path.home() / ".ssh" / "config").resolve():
            return []
        text = path.read_text(errors="replace")
    except OSError:
        return []  # ssh reports a missing config itself
    found = []
    for lineno, line in enumerate(text.splitlines(), 1):
        key = _ssh_key(line.split("#", 1)[0])[0] if line.strip() else ""
        if key and key not in SAFE_SSH:
            found.append(f"{path}:{lineno}: {line.strip()[:60]!r}")
    return found


NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


@dataclass(frozen=True)
class TargetSource:
    """Where a target name resolves to: `origin` is "user" or "built-in"; `path` the file
    (empty for the in-code local-cpu fallback); `overrides` a user file shadowing a built-in."""

    name: str
    origin: str
    path: str
    overrides: bool = False

    def describe(self) -> str:
        return f"{self.origin}{' (overrides the built-in)' if self.overrides else ''}: {self.path or 'in code'}"


def user_dir() -> Path:
    """The user's target directory: $XDG_CONFIG_HOME/edgekd/targets (XDG: a relative value is
    ignored), else ~/.config/edgekd/targets."""
    xdg = os.environ.get("XDG_CONFIG_HOME", "")
    base = Path(xdg) if xdg and Path(xdg).is_absolute() else Path.home() / ".config"
    return base / "edgekd" / "targets"


def builtin_files() -> dict:
    """The built-in target files by name, read as package resources (edgekd._targets)."""
    try:
        root = importlib.resources.files("edgekd._targets")
    except ModuleNotFoundError:  # run from a source checkout without installing: the same folder
        root = Path(__file__).resolve().parent.parent / "targets"
        if not root.is_dir():
            return {}
    return {p.name[:-5]: p for p in sorted(root.iterdir(), key=lambda p: p.name)
            if p.name.endswith(".toml") and p.is_file()}


def list_targets() -> dict[str, TargetSource]:
    """Every target name with the file it resolves to (user files first, then built-ins)."""
    builtins = builtin_files()
    found: dict[str, TargetSource] = {}
    d = user_dir()
    if d.is_dir():
        for p in sorted(d.glob("*.toml")):
            found[p.stem] = TargetSource(p.stem, "user", str(p), overrides=p.stem in builtins or p.stem in BUILTIN)
    for name, p in builtins.items():
        found.setdefault(name, TargetSource(name, "built-in", str(p)))
    for name in BUILTIN:
        found.setdefault(name, TargetSource(name, "built-in", ""))
    return found


def load_target(name: str) -> Target:
    """A target by path to a TOML file, or by name: the user's directory, then the built-ins."""
    p = Path(name)
    if p.suffix == ".toml":
        if not p.is_file():
            raise ConfigError(f"{p}: no such target file")
        return _parse(p.read_text(), p.stem, str(p))
    if not NAME.fullmatch(name):
        raise ConfigError(f"bench target {name!r}: a name is letters, digits, '.', '_' and '-' "
                          "(or give a path to a .toml file)")
    user = user_dir() / f"{name}.toml"
    if user.is_file():
        return _parse(user.read_text(), name, str(user))
    res = builtin_files().get(name)
    if res is not None:
        return _parse(res.read_text(), name, str(res))
    if name in BUILTIN:
        return target_from_dict(name, BUILTIN[name], "built-in")
    raise ConfigError(f"unknown bench target {name!r}; targets: {', '.join(list_targets())} "
                      "(formats such as onnx-int8 are for `edgekd export --target`)")


def _parse(text: str, name: str, source: str) -> Target:
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise TargetFileError(f"{source}: not valid TOML ({e})") from None
    return target_from_dict(name, raw, source)


def init_target(name: str, force: bool = False) -> Path:
    """Copy a built-in target file into the user's directory to edit; an existing file is kept
    unless `force`."""
    builtins = builtin_files()
    if name not in builtins:
        raise ConfigError(f"no built-in target {name!r}; built-ins: {', '.join(builtins)}")
    dest = user_dir() / f"{name}.toml"
    if dest.exists() and not force:
        raise ConfigError(f"{dest} exists; edit it, or pass --force to replace it with the built-in")
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(builtins[name].read_text())
    return dest


# ---------------------------------------------------------------- transports

class Transport:
    """How edgekd reaches a device. Subclasses implement _cmd (the argv that runs a command
    there), put, get and workdir."""

    def __init__(self, target: Target):
        self.t = target

    def _bind(self, target: Target) -> "Transport":
        self.t = target
        return self

    def run(self, argv: list[str], timeout: float | None = None, check: bool = False,
            stdin: bytes | None = None) -> subprocess.CompletedProcess:
        cmd = self._cmd(argv)
        try:
            p = subprocess.run(cmd, input=stdin, capture_output=True, timeout=timeout or self.t.timeout_s)
        except subprocess.TimeoutExpired:
            raise BenchError(f"{self.t.name}: `{shlex.join(argv)[:80]}` took longer than "
                             f"{timeout or self.t.timeout_s:g} s") from None
        except FileNotFoundError:
            raise TargetError(f"{self.t.name}: the client `{cmd[0]}` is not installed") from None
        self._check_link(p)
        if check and p.returncode != 0:
            raise BenchError(f"{self.t.name}: `{shlex.join(argv)[:80]}` failed (exit {p.returncode}): "
                             f"{last_line(p.stderr) or last_line(p.stdout)}")
        return p

    def _cmd(self, argv: list[str]) -> list[str]:
        raise NotImplementedError

    def _check_link(self, p: subprocess.CompletedProcess) -> None:
        """Raise TargetError when the link itself (not the remote command) failed."""

    def put(self, local: Path, remote: str) -> None:
        raise NotImplementedError

    def get(self, remote: str) -> bytes:
        raise NotImplementedError

    @contextlib.contextmanager
    def workdir(self) -> Iterator[str]:
        raise NotImplementedError
        yield ""

    def describe(self) -> str:
        return self.t.kind


class LocalTransport(Transport):
    def _cmd(self, argv):
        return list(argv)

    def put(self, local, remote):
        shutil.copyfile(local, remote)

    def get(self, remote):
        return Path(remote).read_bytes()

    @contextlib.contextmanager
    def workdir(self):
        with tempfile.TemporaryDirectory(prefix="edgekd-bench-") as d:
            yield d


class SSHTransport(Transport):
    """The OpenSSH client, so ~/.ssh/config, keys, agents and ProxyJump all apply. BatchMode:
    never prompt (a missing key or an unknown host key is an error, not a question)."""

    def base(self) -> list[str]:
        t = self.t
        # ssh keeps the first value it sees for an option, and the command line comes before
        # any config file: StrictHostKeyChecking=yes here cannot be undone by an ssh_config.
        cmd = ["ssh", "-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes",
               "-o", f"ConnectTimeout={t.connect_timeout_s}",
               "-o", "ServerAliveInterval=5", "-o", "ServerAliveCountMax=3"]
        if t.ssh_config:
            cmd += ["-F", t.ssh_config]
        if t.identity_file:
            cmd += ["-i", t.identity_file]
        if t.port:
            cmd += ["-p", str(t.port)]
        if t.user:
            cmd += ["-l", t.user]
        for o in t.ssh_options:
            cmd += ["-o", o]
        cmd += [t.host]
        return cmd

    def _cmd(self, argv):
        # ssh hands the remote side one string for its shell: quote every argument.
        return self.base() + ["--", shlex.join(argv)]

    def _check_link(self, p):
        if p.returncode == 255:  # ssh's own failure: connection, authentication or host key
            msg = last_line(p.stderr) or "connection failed"
            hint = None
            if "Host key verification failed" in msg or "host key" in msg.lower():
                hint = "add the host's key to known_hosts (ssh-keyscan, then check its fingerprint)"
            raise TargetError(f"{self.t.name}: cannot reach {self.t.host} over ssh: {msg}", hint=hint)

    def put(self, local, remote):
        # Through the same ssh connection settings, no scp: `cat > FILE` with a quoted path.
        p = self.run(["sh", "-c", 'cat > "$1"', "sh", remote], stdin=Path(local).read_bytes())
        if p.returncode != 0:
            raise BenchError(f"{self.t.name}: could not write {remote}: {last_line(p.stderr)}")

    def get(self, remote):
        p = self.run(["cat", remote])
        if p.returncode != 0:
            raise BenchError(f"{self.t.name}: could not read {remote}: {last_line(p.stderr)}")
        return p.stdout

    @contextlib.contextmanager
    def workdir(self):
        p = self.run(["mktemp", "-d", f"{self.t.remote_tmp.rstrip('/')}/edgekd.XXXXXXXX"], check=True)
        d = p.stdout.decode().strip()
        if not d.startswith(self.t.remote_tmp.rstrip("/") + "/edgekd."):
            raise BenchError(f"{self.t.name}: unexpected work directory {d!r}")
        try:
            yield d
        finally:
            with contextlib.suppress(TargetError, BenchError):
                self.run(["rm", "-rf", "--", d], timeout=60)

    def describe(self):
        return f"ssh {self.t.user + '@' if self.t.user else ''}{self.t.host}{':' + str(self.t.port) if self.t.port else ''}"


class ADBTransport(Transport):
    """The adb client. `adb shell` joins its arguments into one line for the device's shell,
    so the command is quoted with shlex.join."""

    def base(self) -> list[str]:
        return [shutil.which(self.t.adb) or self.t.adb] + (["-s", self.t.serial] if self.t.serial else [])

    def _cmd(self, argv):
        return self.base() + ["shell", shlex.join(argv)]

    def state(self) -> None:
        try:
            p = subprocess.run(self.base() + ["get-state"], capture_output=True, text=True, timeout=30)
        except FileNotFoundError:
            raise TargetError(f"{self.t.name}: the adb client `{self.t.adb}` is not installed") from None
        except subprocess.TimeoutExpired:
            raise TargetError(f"{self.t.name}: adb did not answer within 30 s") from None
        if p.returncode != 0 or p.stdout.strip() != "device":
            who = self.t.serial or "any device"
            raise TargetError(f"{self.t.name}: no Android device ({who}) reachable over adb: "
                              f"{last_line(p.stderr) or p.stdout.strip() or 'not connected'}",
                              hint="connect it, enable USB debugging, and check `adb devices`")

    def put(self, local, remote):
        p = subprocess.run(self.base() + ["push", str(local), remote], capture_output=True, timeout=self.t.timeout_s)
        if p.returncode != 0:
            raise BenchError(f"{self.t.name}: adb push {Path(local).name} failed: {last_line(p.stderr)}")

    def get(self, remote):
        with tempfile.TemporaryDirectory() as d:
            p = subprocess.run(self.base() + ["pull", remote, d + "/f"], capture_output=True, timeout=self.t.timeout_s)
            if p.returncode != 0:
                raise BenchError(f"{self.t.name}: adb pull {remote} failed: {last_line(p.stderr)}")
            return Path(d, "f").read_bytes()

    @contextlib.contextmanager
    def workdir(self):
        p = self.run(["mktemp", "-d", f"{self.t.remote_dir.rstrip('/')}/edgekd.XXXXXXXX"], check=True)
        d = p.stdout.decode().strip()
        try:
            yield d
        finally:
            with contextlib.suppress(TargetError, BenchError, subprocess.TimeoutExpired):
                self.run(["rm", "-rf", d], timeout=60)

    def describe(self):
        return f"adb {self.t.serial or '(default device)'}"
