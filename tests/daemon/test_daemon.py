"""revatid as a service: lifecycle, isolation, bad clients and bad frames, socket handling."""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from revati.revatid.client import Client, DaemonError
from revati.revatid.ctl import hook_env
from revati.revatid.protocol import MAX_FRAME, PROTOCOL_VERSION
from tests.conftest import REVATICTL, Daemon, revatictl_run, start_daemon


def raw_frame(obj: object) -> bytes:
    body = msgpack.packb(obj)
    return struct.pack(">I", len(body)) + body


def read_reply(sock: socket.socket) -> dict | None:
    """One reply frame, or None if the daemon closed the connection."""
    header = b""
    while len(header) < 4:
        chunk = sock.recv(4 - len(header))
        if not chunk:
            return None
        header += chunk
    (size,) = struct.unpack(">I", header)
    body = b""
    while len(body) < size:
        chunk = sock.recv(size - len(body))
        if not chunk:
            return None
        body += chunk
    return msgpack.unpackb(body)


def test_session_lifecycle(daemon: Daemon) -> None:
    with daemon.client() as c:
        assert c.request("ping")["version"] == PROTOCOL_VERSION
        costs = {"aten::_scaled_dot_product_cudnn_attention": 0.0048}
        s = c.request("session.create", gpu="H100-SXM", num_gpus=2,
                      options={"rate": 1.5, "host_costs": costs})["session"]
        assert (s["gpu"], s["num_gpus"], s["state"]) == ("h100", 2, "running")
        assert s["options"]["rate"] == 1.5
        assert [x["id"] for x in c.request("session.list")["sessions"]] == [s["id"]]
        assert Path(s["page"]).exists()

        sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        try:
            with Client(daemon.socket) as member:
                joined = member.request("session.join", session=s["id"], pid=sleeper.pid,
                                        role="actor", name="worker")
                assert joined["page"] == s["page"]
                assert joined["session"]["host_costs"] == costs  # for the adapter's launches
                status = c.request("session.status", session=s["id"])["session"]
                assert [(p["pid"], p["role"], p["name"]) for p in status["participants"]] == \
                    [(sleeper.pid, "actor", "worker")]
            # the connection closed: the participant left, and the session was told
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                status = c.request("session.status", session=s["id"])["session"]
                if not status["participants"]:
                    break
                time.sleep(0.01)
            assert status["participants"] == []
            assert status["exited"][0]["pid"] == sleeper.pid
            assert status["exited"][0]["reason"] == "disconnected"
        finally:
            sleeper.kill()
            sleeper.wait()

        final = c.request("session.stop", session=s["id"])["session"]
        assert final["state"] == "ended"
        assert not Path(s["page"]).exists()
        assert c.request("session.list")["sessions"] == []
        assert c.request("session.status", session=s["id"])["session"]["state"] == "ended"
        with pytest.raises(DaemonError) as err:
            c.request("session.stop", session=s["id"])
        assert err.value.code == "no_session"


def test_errors_are_replies(daemon: Daemon) -> None:
    with daemon.client() as c:
        with pytest.raises(DaemonError) as err:
            c.request("session.create", gpu="tpu-v9")
        assert err.value.code == "unknown_gpu" and "h100" in err.value.message
        with pytest.raises(DaemonError) as err:
            c.request("gpu.sync", device=0)
        assert err.value.code == "not_joined"
        with pytest.raises(DaemonError) as err:
            c.request("session.create", options={"warp": 9})
        assert err.value.code == "bad_request"
        for costs in ({"aten::mm": -1e-6}, {"aten::mm": "slow"}, ["aten::mm"]):
            with pytest.raises(DaemonError) as err:
                c.request("session.create", options={"host_costs": costs})
            assert err.value.code == "bad_request" and "host_costs" in err.value.message
        with pytest.raises(DaemonError) as err:  # would fail at the program's first launch
            c.request("session.create", options={"bundle": str(daemon.socket.parent)})
        assert err.value.code == "bad_request" and "no predictor bundle in" in err.value.message
        with pytest.raises(DaemonError) as err:
            c.request("no.such.thing")
        assert err.value.code == "unknown_type"
        s = c.request("session.create")["session"]
        with pytest.raises(DaemonError) as err:
            c.request("session.join", session=s["id"], pid=2**22 + 12345, role="actor")
        assert err.value.code == "no_process"
        assert c.request("ping")  # still serving on the same connection


def test_a_profiled_device_with_a_bad_spec_is_refused_at_session_create(tmp_path: Path) -> None:
    """A bundle whose measured spec is malformed says so when the session is asked for, not
    at the program's first launch."""
    bundle = tmp_path / "bundles" / "host-cpu"
    bundle.mkdir(parents=True)
    wake = {"gaps_s": [0.1, 0.01], "kick_s": [0, 0], "slowdown": [0.1, 0.1], "decay_s": 0.01}
    spec = {"name": "Some CPU", "flops": {"fp32": 1e11}, "synchronous": True, "wake": wake}
    (bundle / "bundle.json").write_text(json.dumps({"spec": spec}))
    d = start_daemon(tmp_path / "revatid.sock", tmp_path / "revatid.log",
                     env={**os.environ, "REVATI_BUNDLES": str(tmp_path / "bundles")})
    try:
        with d.client() as c:
            with pytest.raises(DaemonError) as err:
                c.request("session.create", gpu="host-cpu")
            assert err.value.code == "bad_request"
            assert "host-cpu's bundle: bad wake entry" in err.value.message
            assert c.request("session.list")["sessions"] == []
    finally:
        d.stop()


def test_empty_session_ends_by_itself(daemon: Daemon) -> None:
    with daemon.client() as c:
        sid = c.request("session.create", options={"linger_s": 0.2})["session"]["id"]
        time.sleep(0.6)
        assert c.request("session.status", session=sid)["session"]["state"] == "ended"
        assert c.request("session.list")["sessions"] == []


def test_eight_sessions_in_parallel_do_not_cross_talk(daemon: Daemon) -> None:
    """Eight runs at once, each sleeping its own virtual time: each session's clock and
    counters are its own."""
    results: dict[int, dict] = {}

    def run(i: int) -> None:
        seconds = 10 * (i + 1)
        result, summary = revatictl_run(
            daemon, [sys.executable, "-c", f"import time; time.sleep({seconds}); "
                     f"print(time.monotonic())"])
        assert result.returncode == 0, result.stderr
        results[i] = summary

    threads = [threading.Thread(target=run, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len({s["id"] for s in results.values()}) == 8
    for i, summary in results.items():
        virtual = summary["counters"]["virtual_s"]
        assert 10 * (i + 1) <= virtual < 10 * (i + 1) + 1.0, (i, summary["counters"])


def test_version_1_requests_are_still_served(daemon: Daemon) -> None:
    """Protocol 2 only adds (run items, a batch on GPU queries): a version 1 client works."""
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(str(daemon.socket))
        for v, answer in ((1, "ok"), (2, "ok"), (3, "error"), (True, "error")):
            s.sendall(raw_frame({"v": v, "type": "ping", "id": 1}))
            reply = read_reply(s)
            assert reply is not None and reply["type"] == answer, (v, reply)
            if answer == "error":
                assert reply["code"] == "bad_version"


def test_client_killed_mid_request(daemon: Daemon) -> None:
    half = raw_frame({"v": 1, "type": "ping", "id": 1})[:5]
    code = (
        "import socket, sys, os\n"
        "s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1])\n"
        f"s.sendall({half!r})\n"
        "os.kill(os.getpid(), 9)\n"
    )
    subprocess.run([sys.executable, "-c", code, str(daemon.socket)])
    with daemon.client() as c:
        assert c.request("ping")["pid"] == daemon.proc.pid


def test_oversized_frame_is_refused_and_the_daemon_goes_on(daemon: Daemon) -> None:
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(str(daemon.socket))
        s.sendall(struct.pack(">I", MAX_FRAME + 1))
        reply = read_reply(s)
        assert reply is not None and reply["code"] == "bad_frame"
        assert read_reply(s) is None  # then closed
    with daemon.client() as c:
        assert c.request("ping")


ints = st.integers(min_value=-(2**63), max_value=2**64 - 1)  # what msgpack can carry
frames = st.one_of(
    st.binary(min_size=1, max_size=64).map(lambda b: struct.pack(">I", len(b)) + b),
    st.recursive(st.none() | st.booleans() | ints | st.text(max_size=8),
                 lambda inner: st.lists(inner, max_size=4)
                 | st.dictionaries(st.text(max_size=6), inner, max_size=4),
                 max_leaves=10).map(raw_frame),
    st.fixed_dictionaries({
        "v": st.sampled_from([1, 2, "1", None]),
        "type": st.sampled_from(["ping", "session.create", "session.join", "gpu.launch",
                                 "gpu.sync", "session.status", "trace", 7]),
        "id": st.one_of(ints, st.text(max_size=3), st.none()),
        "session": st.one_of(st.text(max_size=8), ints),
        "gpu": st.one_of(st.text(max_size=8), ints),
        "num_gpus": st.one_of(ints, st.text(max_size=2)),
        "pid": st.one_of(ints, st.text(max_size=2)),
        "role": st.text(max_size=8),
        "device": st.one_of(ints, st.none()),
        "batch": st.lists(st.lists(ints | st.text(max_size=3), max_size=9),
                          max_size=3),
        "options": st.one_of(st.none(), st.dictionaries(st.text(max_size=5), ints,
                                                        max_size=2)),
    }).map(raw_frame),
)


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(frame=frames, truncate=st.booleans())
def test_bad_frames_get_an_error_or_a_clean_close(daemon: Daemon, frame: bytes,
                                                 truncate: bool) -> None:
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(10)
        s.connect(str(daemon.socket))
        if truncate and len(frame) > 5:
            s.sendall(frame[: len(frame) // 2])
            s.shutdown(socket.SHUT_WR)  # a truncated frame: the daemon sees EOF
            assert read_reply(s) is None
        else:
            s.sendall(frame)
            reply = read_reply(s)
            assert reply is not None
            assert reply["type"] in ("ok", "error")
            if reply["type"] == "error":
                assert reply["code"] and reply["message"]
    with daemon.client() as c:  # and everyone else is still served
        assert c.request("ping")
        for s in c.request("session.list")["sessions"]:
            c.request("session.stop", session=s["id"])


def test_socket_mode_is_0600(daemon: Daemon) -> None:
    assert stat.S_IMODE(daemon.socket.stat().st_mode) == 0o600


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to connect as another uid")
def test_other_uid_is_refused() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        os.chmod(tmp, 0o755)
        daemon = start_daemon(Path(tmp) / "d.sock", Path(tmp) / "d.log")
        try:
            os.chmod(daemon.socket, 0o666)  # let the other uid reach the credential check
            out = _connect_as_nobody(daemon.socket)
        finally:
            daemon.stop()
    assert out.stdout.split() == ["closed", "True"], out.stderr


def _connect_as_nobody(path: Path) -> subprocess.CompletedProcess:
    code = (
        "import os, socket, struct, sys\n"
        "os.setuid(65534)\n"
        "s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1])\n"
        "data = s.recv(4096)\n"
        "print('closed' if s.recv(1) == b'' else 'open', b'not the daemon' in data)\n"
    )
    return subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True,
                          text=True, timeout=30)


def test_sigterm_shuts_down_and_removes_the_socket(tmp_path: Path) -> None:
    d = start_daemon(tmp_path / "d.sock", tmp_path / "d.log")
    with d.client() as c:
        c.request("session.create")
    d.proc.send_signal(signal.SIGTERM)
    assert d.proc.wait(15) == 0
    assert not d.socket.exists()
    assert "revatid.stopped" in d.log.read_text()


def test_socket_activation_uses_the_inherited_fd(tmp_path: Path) -> None:
    path = tmp_path / "activated.sock"
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(path))
    listener.listen(16)
    fd = listener.fileno()

    def as_fd_3() -> None:
        os.dup2(fd, 3)

    launcher = ("import os, sys\n"
                "os.environ['LISTEN_PID'] = str(os.getpid())\n"
                "os.environ['LISTEN_FDS'] = '1'\n"
                "os.execv(sys.executable, [sys.executable, '-m', 'revati.revatid.main'])\n")
    proc = subprocess.Popen([sys.executable, "-c", launcher], preexec_fn=as_fd_3,
                            pass_fds=(fd, 3), stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                with Client(path, timeout=5) as c:
                    assert c.request("ping")["pid"] == proc.pid
                    break
            except (ConnectionError, OSError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(15)
        listener.close()
    assert path.exists()  # systemd owns an activated socket: the daemon leaves it


def test_revatictl_reports_a_missing_daemon(tmp_path: Path) -> None:
    out = subprocess.run([*REVATICTL, "--socket", str(tmp_path / "none.sock"), "sessions"],
                         capture_output=True, text=True)
    assert out.returncode == 2
    assert "revatid is not running" in out.stderr


def test_revatictl_run_starts_a_private_daemon(tmp_path: Path) -> None:
    env = {**os.environ, "XDG_RUNTIME_DIR": str(tmp_path)}
    out = subprocess.run([*REVATICTL, "run", "--", sys.executable, "-c",
                          "import time; time.sleep(5); print(round(time.monotonic(), 3))"],
                         capture_output=True, text=True, env=env, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "virtual elapsed" in out.stderr and "speed-up" in out.stderr
    assert not (tmp_path / "revati" / "revatid.sock").exists()


def test_revatictl_run_of_a_command_that_cannot_start(daemon: Daemon, tmp_path: Path) -> None:
    """A shell's exit status and a one-line reason, and the session it made is stopped; a
    host-costs file that cannot be read is refused before any session."""
    missing = str(tmp_path / "no-such-program")
    out = subprocess.run([*REVATICTL, "--socket", str(daemon.socket), "run", "--", missing],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 127 and "Traceback" not in out.stderr
    assert f"revatictl run: cannot start {missing}: No such file or directory" in out.stderr
    for costs in (tmp_path / "none.json", Path(__file__)):
        out = subprocess.run([*REVATICTL, "--socket", str(daemon.socket), "run",
                              "--host-costs", str(costs), "--", "true"],
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 1 and f"--host-costs {costs}:" in out.stderr
    with daemon.client() as c:
        assert c.request("session.list")["sessions"] == []


@pytest.mark.parametrize(("args", "message"), [
    (["demo", "--framework", "toy", "--num-prompts", "0"], "--num-prompts: must be at least 1"),
    (["demo", "--request-rate", "0"], "--request-rate: must be above 0"),
    (["demo", "--tp", "0"], "--tensor-parallel-size/--tp: must be at least 1"),
    (["demo", "--prefix-len", "-1"], "--prefix-len: must be at least 0"),
    (["run", "--num-gpus", "0", "--", "true"], "--num-gpus: must be at least 1"),
    (["run", "--cpu-dilation", "-1", "--", "true"], "--cpu-dilation: must be above 0"),
    (["validate", "--self", "--repeats", "0"], "--repeats: must be at least 1"),
    (["demo", "--framework", "toy", "--request-rate", "inf"], "give a finite --request-rate"),
    (["demo", "--model", "NotAModel"], "--model NotAModel is neither a bundled model"),
    (["run", "--trace", "/nonexistent/t.json", "--", "true"],
     "--trace: cannot write /nonexistent/t.json: no folder /nonexistent"),
    (["demo", "--json", "/"], "--json: cannot write /"),
    (["trace", "abc", "-o", "/nonexistent/t.json"], "cannot write /nonexistent/t.json"),
])
def test_revatictl_refuses_counts_and_rates_out_of_range(args: list[str], message: str,
                                                        tmp_path: Path) -> None:
    """A count of zero hung the toy demo, a zero rate divided by zero, an unknown model failed
    inside the served process, an output file that cannot be written failed after the run
    (its result lost): refused up front, before any session."""
    out = subprocess.run([*REVATICTL, "--socket", str(tmp_path / "none.sock"), *args],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode in (1, 2) and "Traceback" not in out.stderr
    assert message in out.stderr


def test_revatictl_json_listing(daemon: Daemon) -> None:
    with daemon.client() as c:
        sid = c.request("session.create", gpu="a100", num_gpus=4)["session"]["id"]
    import json

    out = subprocess.run([*REVATICTL, "--socket", str(daemon.socket), "sessions", "--json"],
                         capture_output=True, text=True, check=True)
    listed = json.loads(out.stdout)
    assert [(s["id"], s["gpu"], s["num_gpus"]) for s in listed] == [(sid, "a100", 4)]
    out = subprocess.run([*REVATICTL, "--socket", str(daemon.socket), "status", sid, "--json"],
                         capture_output=True, text=True, check=True)
    assert json.loads(out.stdout)["id"] == sid


def test_watchdog_reports_a_session_where_everyone_waits_forever(daemon: Daemon) -> None:
    with daemon.client() as c:
        sid = c.request("session.create", options={"stuck_warn_s": 0.5})["session"]["id"]
    env = hook_env(str(daemon.socket), sid)
    proc = subprocess.Popen([sys.executable, "-c", "import threading; threading.Event().wait()"],
                            env=env)
    try:
        deadline = time.monotonic() + 10
        while "session.stuck" not in daemon.log.read_text():
            assert time.monotonic() < deadline, daemon.log.read_text()[-2000:]
            time.sleep(0.1)
    finally:
        proc.kill()
        proc.wait()
    assert "every participant waits with no deadline" in daemon.log.read_text()
    with daemon.client() as c:  # the dead participant is removed
        for _ in range(50):
            status = c.request("session.status", session=sid)["session"]
            if not status["participants"]:
                break
            time.sleep(0.1)
        assert status["participants"] == []


def test_systemd_units_agree_with_the_daemon() -> None:
    """The socket unit listens where `revatid --system` would, with the daemon's 0600 mode, and
    the service is activated by it."""
    import configparser

    from revati.revatid.main import SYSTEM_SOCKET

    units = Path(__file__).parents[2] / "systemd"
    sock, svc = configparser.ConfigParser(strict=False), configparser.ConfigParser(strict=False)
    sock.read(units / "revatid.socket")
    svc.read(units / "revatid.service")
    assert sock["Socket"]["ListenStream"] == str(SYSTEM_SOCKET)
    assert sock["Socket"]["SocketMode"] == "0600"
    assert svc["Unit"]["Requires"] == "revatid.socket"
    assert "--system" in svc["Service"]["ExecStart"]
