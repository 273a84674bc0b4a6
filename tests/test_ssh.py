"""The SSH target against a real sshd on 127.0.0.1 (Debian's openssh-server): host-key checking
on, nothing left behind, quoting, dropped connections, unreachable hosts."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.sshd import start_sshd, unavailable_reason

reason = unavailable_reason()
pytestmark = pytest.mark.skipif(reason is not None, reason=reason or "")


@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    try:
        server = start_sshd(tmp_path_factory.mktemp("sshd"))
    except (RuntimeError, OSError, subprocess.CalledProcessError) as e:
        pytest.skip(f"cannot start sshd here: {e}")
    yield server
    server.stop()


def ssh_target(tmp_path: Path, sshd, remote_tmp: Path, python: str = sys.executable, **extra) -> Path:
    remote_tmp.mkdir(parents=True, exist_ok=True)
    lines = ['kind = "ssh"', f'host = "{sshd.alias}"', f'ssh_config = "{sshd.config}"',
             f'python = "{python}"', f'remote_tmp = "{remote_tmp}"', "threads = 1", "warmup = 2",
             "min_runs = 30", "min_seconds = 0.1", "timeout_s = 300"]
    lines += [f"{k} = {json.dumps(v)}" for k, v in extra.items()]
    p = tmp_path / "pi-test.toml"
    p.write_text("\n".join(lines) + "\n")
    return p


@pytest.fixture(scope="module")
def exports(tiny_student, tiny_ds, store):
    from edgekd.export import export

    return [export(tiny_student, f, store=store, ds=tiny_ds, name=f"ssh-{f}") for f in ("onnx-fp32", "tflite-int8")]


def test_check_reports_the_remote_runtimes(sshd, tmp_path):
    from edgekd.bench import check_target
    from edgekd.targets import load_target

    info = check_target(load_target(str(ssh_target(tmp_path, sshd, tmp_path / "remote"))))
    assert info["kind"] == "ssh" and "onnxruntime" in info["runtimes"] and "numpy" in info["runtimes"]


def test_ssh_and_local_give_comparable_figures_and_leave_nothing_behind(sshd, tmp_path, exports,
                                                                       tiny_student, fast_target):
    from edgekd.bench import bench
    from edgekd.targets import load_target

    remote = tmp_path / "remote tmp"  # a space: every path must be quoted on the way
    t_ssh = load_target(str(ssh_target(tmp_path, sshd, remote)))
    _, over_ssh = bench([tiny_student, *exports], t_ssh, out=tmp_path / "r")
    _, local = bench([tiny_student, *exports], load_target(str(fast_target)), out=tmp_path / "r")
    assert all(r["status"] == "ok" for r in over_ssh + local)
    for a, b in zip(over_ssh, local):
        assert a["artifact"]["sha256"] == b["artifact"]["sha256"]
        assert a["accuracy"] == b["accuracy"]  # same file, same inputs: the same rankings
        ratio = a["latency_ms"]["p50_ms"] / b["latency_ms"]["p50_ms"]
        assert 1 / 3 < ratio < 3, (a["artifact"]["name"], ratio)
        assert a["target"]["kind"] == "ssh" and a["device"]["hostname"]
    assert list(remote.iterdir()) == []  # the remote work directories are gone


def test_nothing_unquoted_reaches_the_remote_shell(sshd, tmp_path):
    from edgekd.targets import load_target

    canary = tmp_path / "pwned"
    t = load_target(str(ssh_target(tmp_path, sshd, tmp_path / "r")))
    tr = t.transport()
    p = tr.run(["echo", f"$(touch {canary})", "; touch", str(canary), "`id`"], check=True)
    assert not canary.exists()
    assert p.stdout.decode().strip() == f"$(touch {canary}) ; touch {canary} `id`"
    with tr.workdir() as wd:
        weird = wd + "/it's a $(file)"
        tr.put(Path(__file__), weird)
        assert tr.get(weird) == Path(__file__).read_bytes()


def test_an_unknown_host_key_is_refused(sshd, tmp_path):
    from edgekd.bench import check_target
    from edgekd.errors import TargetError
    from edgekd.targets import load_target

    cfg = Path(sshd.config).read_text().replace(str(sshd.root / "known_hosts"), str(tmp_path / "empty_known_hosts"))
    (tmp_path / "empty_known_hosts").write_text("")
    (tmp_path / "ssh_config").write_text(cfg)
    t = tmp_path / "t.toml"
    t.write_text(f'kind = "ssh"\nhost = "{sshd.alias}"\nssh_config = "{tmp_path / "ssh_config"}"\n')
    with pytest.raises(TargetError, match="Host key verification failed") as e:
        check_target(load_target(str(t)))
    assert "known_hosts" in e.value.hint


@pytest.mark.parametrize("option", ["StrictHostKeyChecking=no", "StrictHostKeyChecking=false",
                                    'StrictHostKeyChecking="no"', "stricthostkeychecking=OFF",
                                    "UserKnownHostsFile=/dev/null"])
def test_options_that_disable_host_key_checking_are_rejected(tmp_path, option):
    from edgekd.errors import TargetError
    from edgekd.targets import load_target

    t = tmp_path / "t.toml"
    t.write_text(f'kind = "ssh"\nhost = "pi"\nssh_options = [{json.dumps(option)}]\n')
    with pytest.raises(TargetError, match="host-key checking"):
        load_target(str(t))


def test_an_ssh_config_cannot_switch_host_key_checking_off(tmp_path):
    """edgekd passes StrictHostKeyChecking=yes before any config file, and ssh keeps the first value."""
    from edgekd.targets import load_target

    cfg = tmp_path / "ssh_config"
    cfg.write_text("Host pi\n  StrictHostKeyChecking no\n")
    t = tmp_path / "t.toml"
    t.write_text(f'kind = "ssh"\nhost = "pi"\nssh_config = "{cfg}"\n')
    cmd = load_target(str(t)).transport().base()
    p = subprocess.run(cmd[:-1] + ["-G", cmd[-1]], capture_output=True, text=True)
    assert "stricthostkeychecking true" in p.stdout


def test_option_like_users_and_hosts_are_refused(tmp_path):
    from edgekd.errors import TargetError
    from edgekd.targets import load_target

    t = tmp_path / "t.toml"
    t.write_text('kind = "ssh"\nhost = "ssh://-oProxyCommand=evil@pi"\n')
    with pytest.raises(TargetError, match="'user'"):
        load_target(str(t))


def test_an_unreachable_host_is_one_line_and_exit_3(tmp_path, tiny_teacher):
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    t = tmp_path / "gone.toml"
    t.write_text(f'kind = "ssh"\nhost = "ssh://nobody@127.0.0.1:{port}"\nconnect_timeout_s = 3\n')
    env = {k: v for k, v in os.environ.items() if k != "EDGEKD_DEBUG"}
    p = subprocess.run([sys.executable, "-m", "edgekd", "bench", str(tiny_teacher.path), "--target", str(t),
                        "--results", str(tmp_path / "r")], capture_output=True, text=True, env=env, timeout=120)
    assert p.returncode == 3
    assert p.stderr.startswith(f"target gone: {t}\n")  # which file was loaded, then the error
    lines = [l for l in p.stderr.splitlines()[1:] if l.strip()]
    assert len(lines) == 1 and "cannot reach 127.0.0.1" in lines[0] and "Traceback" not in p.stderr


def test_a_dropped_connection_fails_that_cell_and_keeps_the_rest(sshd, tmp_path, exports, tiny_student):
    """The remote python kills its own ssh session when asked to run the .tflite: that cell
    fails with a clear error, every other cell finishes."""
    from edgekd.bench import bench
    from edgekd.targets import load_target

    wrapper = tmp_path / "flaky-python"
    wrapper.write_text("#!/bin/sh\ncase \"$*\" in *model.tflite*) kill -9 $PPID; sleep 5;; esac\n"
                       f'exec "{sys.executable}" "$@"\n')
    wrapper.chmod(0o755)
    t = load_target(str(ssh_target(tmp_path, sshd, tmp_path / "remote", python=str(wrapper))))
    run_dir, recs = bench([tiny_student, *exports], t, out=tmp_path / "r")
    by = {r["artifact"]["name"]: r for r in recs}
    assert by["ssh-tflite-int8"]["status"] == "failed"
    assert "cannot reach" in by["ssh-tflite-int8"]["error"]  # the link failed, not the runner
    assert sum(r["status"] == "ok" for r in recs) == len(recs) - 1
    assert len(list(run_dir.glob("*__*.json"))) == len(recs)
