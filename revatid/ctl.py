"""`revatictl`: control revatid, and run commands inside emulation sessions."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from revati.revatid.client import Client, DaemonError, NotRunning
from revati.revatid.paths import default_socket


def boot_dir() -> Path:
    """The folder whose sitecustomize makes Python processes join a session."""
    import revati.adapters

    return Path(revati.adapters.__file__).parent / "boot"


def hook_env(socket_path: str, session: str | None, base: dict[str, str] | None = None,
             ) -> dict[str, str]:
    env = dict(os.environ if base is None else base)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(boot_dir()), env.get("PYTHONPATH")) if p)
    env["REVATI_HOOKS"] = "1"
    env["REVATI_SOCKET"] = socket_path
    if session:
        env["REVATI_SESSION"] = session
    else:
        env.pop("REVATI_SESSION", None)
    return env


@contextlib.contextmanager
def daemon_for_run(socket_path: str | None) -> Iterator[str]:
    """The daemon to use: the one listening, or a private one for the duration of the run."""
    path = socket_path or str(default_socket())
    try:
        Client(path, timeout=5).close()
    except NotRunning:
        pass
    else:
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="revati-") as tmp:
        private = os.path.join(tmp, "revatid.sock")
        read_fd, write_fd = os.pipe()
        log = open(os.path.join(tmp, "revatid.log"), "wb")  # noqa: SIM115 - lives for the run
        proc = subprocess.Popen(
            [sys.executable, "-m", "revati.revatid.main", "--socket", private,
             "--ready-fd", str(write_fd), "--log-level", os.environ.get("REVATI_LOG_LEVEL",
                                                                         "warning")],
            pass_fds=(write_fd,), stdout=log, stderr=log,
            env={k: v for k, v in os.environ.items()
                 if not k.startswith("REVATI_") or k in ("REVATI_CACHE", "REVATI_BUNDLES")})
        os.close(write_fd)
        with os.fdopen(read_fd, "rb") as ready:
            line = ready.readline()
        if line.strip() != b"ready":
            proc.kill()
            log.close()
            raise SystemExit("revatictl: the private revatid did not start:\n"
                             + Path(log.name).read_text(errors="replace")[-2000:])
        try:
            yield private
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
            log.close()


def _print(obj: Any, as_json: bool, text: str) -> None:
    print(json.dumps(obj, indent=2, default=str) if as_json else text)


def _session_line(s: dict[str, Any]) -> str:
    c = s["counters"]
    return (f"{s['id']}  {s['state']:<7} {s['num_gpus']}x {s['gpu']:<10} "
            f"participants={len(s['participants'])} virtual={c['virtual_s']:.3f}s "
            f"wall={c['wall_s']:.3f}s jumps={c['jumps']} launches={c['launches']}")


def summary_text(s: dict[str, Any], exit_code: int | None = None) -> str:
    c = s["counters"]
    lines = [
        f"revati session {s['id']}: {s['num_gpus']}x {s.get('gpu_name', s['gpu'])}"
        + (f", command exited {exit_code}" if exit_code is not None else ""),
        f"  virtual elapsed  {c['virtual_s']:10.3f} s",
        f"  wall elapsed     {c['wall_s']:10.3f} s",
        f"  speed-up         {c['speedup']:10.2f} x",
        f"  jumps            {c['jumps']:10d}   ({c['jumped_s']:.3f} s of virtual time skipped)",
        f"  real-time flow   {c['flowed_s']:10.3f} s   (virtual time that passed at real rate)",
        f"  frozen           {c['frozen_s']:10.3f} s   (Revati's own overhead, kept out; "
        f"{c.get('op_entry_s', 0.0):.3f} s of it ops' way into Revati)",
        f"  CPU contention   {c.get('contended_s', 0.0):10.3f} s   (real time processes waited "
        "for one of this host's CPUs, kept out)",
        f"  kernel launches  {c['launches']:10d}   collectives {c['collectives']}",
        f"  quiescence seen  {c['quiescence_by_hook']} by hooks, {c['quiescence_by_proc']} "
        "by /proc (unhooked waits)",
    ]
    inside = sorted(((p["revati_s"], p["name"] or str(p["pid"]))
                     for p in s.get("participants", []) + s.get("exited", [])), reverse=True)
    if inside and inside[0][0] > 0:
        lines.append("  inside Revati    " + ", ".join(
            f"{name} {sec:.3f} s" for sec, name in inside[:4])
            + "   (real time each process spent in Revati's own code)")
    if c.get("unhooked_waits"):
        lines.append("  unhooked waits   " + ", ".join(
            f"{who} {n}" for who, n in c["unhooked_waits"].items())
            + "   (judged asleep through /proc)")
    if c.get("predicted_by"):
        sources = ", ".join(f"{k} {v}" for k, v in sorted(c["predicted_by"].items()))
        lines.append(f"  predicted by     {sources}   (roofline: no trained model covers it)")
    for p in s.get("pending_collectives", []):
        arrived = ", ".join(f"rank {r} (pid {pid})" for r, pid in sorted(p["arrived"].items()))
        lines.append(f"  waiting          {p['op']} #{p['seq']} on {p['group']}: "
                     f"{arrived} of {p['ranks']} arrived")
    for b in s.get("blocked_streams", []):
        lines.append(f"  blocked stream   pid {b['pid']} GPU {b['device']} stream {b['stream']}: "
                     f"behind {b['behind']} ({b['queued']} items queued)")
    return "\n".join(lines)


def at_least(low: int) -> Callable[[str], int]:
    """An argparse type: an integer of at least `low` (a count of prompts, of GPUs, ...)."""
    def parse(text: str) -> int:
        value = int(text)
        if value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}, not {value}")
        return value

    parse.__name__ = "integer"  # what argparse names in its "invalid ... value" message
    return parse


def positive_float(text: str) -> float:
    """An argparse type: a number above 0 (a rate; `inf` sends everything at once)."""
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be above 0, not {text}")
    return value


def output_file(text: str) -> str:
    """An argparse type: a file this command will write, checked before the run whose result
    it holds (a trace or summary that cannot be written would be lost at the end)."""
    path = Path(text)
    folder = path.parent
    if not folder.is_dir():
        raise argparse.ArgumentTypeError(f"cannot write {text}: no folder {folder}")
    if path.is_dir() or not os.access(folder, os.W_OK):
        raise argparse.ArgumentTypeError(f"cannot write {text}")
    return text


def _host_cost(text: str) -> tuple[str, float]:
    op, sep, seconds = text.rpartition("=")
    try:
        if sep and op:
            return op, float(seconds)
    except ValueError:
        pass
    raise SystemExit(f"revatictl run: --host-cost takes OP=SECONDS, not {text!r}")


def cmd_run(args: argparse.Namespace) -> int:
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        raise SystemExit("revatictl run: give a command after --")
    options: dict[str, Any] = {"rate": args.cpu_dilation, "grace_us": args.grace_us,
                               "cpus": args.host_cpus,
                               "seed": args.seed, "name": Path(command[0]).name}
    if args.fixed_ns is not None:
        options["fixed_ns"] = args.fixed_ns
    if args.bundle:
        options["bundle"] = str(Path(args.bundle).resolve())
    try:
        costs = json.loads(Path(args.host_costs).read_text()) if args.host_costs else {}
    except (OSError, ValueError) as exc:
        raise SystemExit(f"revatictl run: --host-costs {args.host_costs}: {exc}") from None
    if not isinstance(costs, dict):
        raise SystemExit(f"revatictl run: --host-costs {args.host_costs}: not a JSON object "
                         "of op names to seconds")
    costs.update(_host_cost(text) for text in args.host_cost or [])
    if costs:
        options["host_costs"] = costs
    with daemon_for_run(args.socket) as sock:
        with Client(sock) as c:
            session = c.request("session.create", gpu=args.gpu, num_gpus=args.num_gpus,
                                options=options)["session"]
        sid = session["id"]
        try:
            proc = subprocess.Popen(command, env=hook_env(sock, sid))
        except OSError as exc:  # not found, not executable: the session ends empty
            print(f"revatictl run: cannot start {command[0]}: {exc.strerror}", file=sys.stderr)
            code = 127 if isinstance(exc, FileNotFoundError) else 126  # as a shell says
        else:
            try:
                code = proc.wait()
            except KeyboardInterrupt:
                proc.send_signal(signal.SIGINT)
                code = proc.wait()
        with Client(sock) as c:
            if args.trace:
                trace = c.request("trace", session=sid)["trace"]
                Path(args.trace).write_text(json.dumps(trace))
            final = c.request("session.stop", session=sid)["session"]
    print(summary_text(final, code), file=sys.stderr)
    if args.json:
        Path(args.json).write_text(json.dumps({"exit_code": code, **final}, indent=2,
                                              default=str))
    return code


def _stats_ms(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)

    def q(p: float) -> float:
        return ordered[min(len(ordered) - 1, int(p * len(ordered)))] * 1e3

    return {"mean": sum(ordered) / len(ordered) * 1e3, "median": q(0.5), "p99": q(0.99)}


def cmd_demo(args: argparse.Namespace) -> int:
    """The embedded default: a workload on virtual GPUs, no GPU and no download needed."""
    if args.framework != "toy":
        from revati.revatid.demo import serving

        with daemon_for_run(args.socket) as sock:
            def create(gpu: str, num_gpus: int, options: dict[str, Any]) -> dict[str, Any]:
                with Client(sock) as c:
                    return c.request("session.create", gpu=gpu, num_gpus=num_gpus,
                                     options=options)["session"]

            def stop(sid: str) -> dict[str, Any]:
                with Client(sock) as c:
                    return c.request("session.stop", session=sid)["session"]

            def trace(sid: str, path: str) -> None:
                with Client(sock) as c:
                    Path(path).write_text(json.dumps(c.request("trace", session=sid)["trace"]))

            return serving.run(args, sock, create, stop, trace)
    from revati.revatid.demo import md1

    if args.request_rate == float("inf"):
        raise SystemExit("revatictl demo --framework toy: give a finite --request-rate (its "
                         "client draws Poisson arrivals)")
    command = [sys.executable, md1.__file__, str(args.num_prompts), str(args.seed),
               str(1.0 / args.request_rate), "llama8b"]
    options = {"seed": args.seed, "name": "demo-toy"}
    with daemon_for_run(args.socket) as sock:
        with Client(sock) as c:
            session = c.request("session.create", gpu=args.gpu, num_gpus=1,
                                options=options)["session"]
        out = subprocess.run(command, env=hook_env(sock, session["id"]), capture_output=True,
                             text=True)
        with Client(sock) as c:
            final = c.request("session.stop", session=session["id"])["session"]
    if out.returncode != 0:
        print(out.stderr, file=sys.stderr)
        return out.returncode
    result = json.loads(out.stdout.strip().splitlines()[-1])
    lat = _stats_ms(result["latencies"])
    c = final["counters"]
    report = {
        "framework": "toy", "gpu": final["gpu"], "completed": len(result["latencies"]),
        "request_rate": args.request_rate,
        "mean_e2e_ms": lat["mean"], "median_e2e_ms": lat["median"], "p99_e2e_ms": lat["p99"],
        "request_throughput": len(result["latencies"]) / result["virtual_span"],
        "virtual_s": c["virtual_s"], "wall_s": c["wall_s"], "speedup": c["speedup"],
    }
    print(f"Toy server on a virtual {final.get('gpu_name', final['gpu'])}: one Llama-3.1-8B "
          f"decode step (batch 1) per request, {args.num_prompts} requests at "
          f"{args.request_rate} req/s (Poisson, seed {args.seed})")
    print(f"  completed               {report['completed']}")
    print(f"  E2E latency  mean {lat['mean']:.3f} ms   median {lat['median']:.3f} ms   "
          f"p99 {lat['p99']:.3f} ms")
    print(f"  request throughput      {report['request_throughput']:.2f} req/s")
    print(summary_text(final))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="revatictl", description="Control the Revati daemon")
    ap.add_argument("--socket", help="daemon socket (default: $REVATI_SOCKET or "
                    "$XDG_RUNTIME_DIR/revati/revatid.sock)")
    sub = ap.add_subparsers(dest="cmd", required=True)

    for name, helptext in (("ping", "is the daemon alive?"), ("sessions", "list sessions")):
        p = sub.add_parser(name, help=helptext)
        p.add_argument("--json", action="store_true")
    for name, helptext in (("status", "one session's state"), ("stop", "end a session")):
        p = sub.add_parser(name, help=helptext)
        p.add_argument("id")
        p.add_argument("--json", action="store_true")

    p = sub.add_parser("trace", help="write a session's Chrome/Perfetto trace JSON")
    p.add_argument("id")
    p.add_argument("-o", "--output", required=True, type=output_file)

    p = sub.add_parser("run", help="run a command in a new emulation session")
    p.add_argument("--gpu", default="h100", help="GPU SKU (default h100)")
    p.add_argument("--num-gpus", type=at_least(1), default=1)
    p.add_argument("--cpu-dilation", type=positive_float, default=1.0,
                   help="virtual seconds per real second of CPU work (default 1)")
    p.add_argument("--host-cpus", type=int, help="CPUs the run's processes share (default: "
                   "the daemon's); while more processes run, virtual time flows at cpus/running "
                   "(0: no contention model)")
    p.add_argument("--grace-us", type=float, default=50.0,
                   help="quiescence must hold this long before a jump (default 50)")
    p.add_argument("--fixed-ns", type=int, help="predict every kernel at this duration (tests)")
    p.add_argument("--bundle", help="predict with this bundle folder instead of the SKU's own")
    p.add_argument("--host-cost", action="append", metavar="OP=SECONDS",
                   help="host time a call of OP costs on the real machine beyond its dispatch "
                   "(library work a CPU-only build never runs: cuDNN attention's graph build); "
                   "repeatable")
    p.add_argument("--host-costs", metavar="FILE",
                   help="a JSON object of such host times, op name -> seconds")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=output_file, help="write the session summary as JSON here")
    p.add_argument("--trace", type=output_file,
                   help="write the session trace (Chrome JSON) here")
    p.add_argument("command", nargs=argparse.REMAINDER)

    p = sub.add_parser("demo", help="run the embedded default workload (no GPU, no download)")
    p.add_argument("--framework", default="vllm", choices=("vllm", "sglang", "toy"),
                   help="vllm (default): vllm serve + vllm bench serve; toy: a small "
                   "asyncio server and client in the dev environment")
    p.add_argument("--gpu", default="h100")
    p.add_argument("--model", default="Llama-3.1-8B", help="a bundled model or a folder")
    p.add_argument("--tensor-parallel-size", "--tp", type=at_least(1), default=1)
    p.add_argument("--pipeline-parallel-size", "--pp", type=at_least(1), default=1,
                   help="pipeline stages (vllm); the session has tp x pp GPUs")
    p.add_argument("--cpu-dilation", type=positive_float, default=1.0,
                   help="virtual seconds per real second of host CPU work (default 1: this "
                   "host's CPU stands for the GPU server's)")
    p.add_argument("--host-cpus", type=int,
                   help="CPUs the processes share (default: the daemon's; 0: no contention model)")
    p.add_argument("--input-len", type=at_least(1), default=512)
    p.add_argument("--output-len", type=at_least(1), default=128)
    p.add_argument("--prefix-len", type=at_least(0), default=0,
                   help="a shared-prefix workload: requests in 4 groups, each sharing a prompt "
                   "prefix of this many tokens (vllm: prefix_repetition, sglang: "
                   "generated-shared-prefix); default 0: random prompts")
    p.add_argument("--client", choices=("own", "vllm"), default="own",
                   help="load generator: the framework's own benchmark, or `vllm bench serve` "
                   "(from the vLLM environment) against any framework's OpenAI API")
    p.add_argument("--trace", type=output_file,
                   help="write the session trace (Chrome JSON) here")
    p.add_argument("--num-prompts", type=at_least(1), default=200)
    p.add_argument("--request-rate", type=positive_float, default=4.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=output_file,
                   help="write the benchmark result and speed-up as JSON here")

    p = sub.add_parser("attach", help="move a running process tree onto a session's clock")
    p.add_argument("pid", type=int)
    p.add_argument("--session", required=True)
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("env", help="print the environment that makes Python processes "
                       "attachable (or join --session at start)")
    p.add_argument("--session")

    p = sub.add_parser("predictors", help="train, list and evaluate kernel predictors")
    p.add_argument("args", nargs=argparse.REMAINDER)

    from revati.revatid.validate import cli as validate_cli

    validate_cli.add_parser(sub)

    args = ap.parse_args(argv)
    try:
        return _dispatch(args)
    except NotRunning as exc:
        print(f"revatictl: {exc}", file=sys.stderr)
        return 2
    except DaemonError as exc:
        print(f"revatictl: {exc.message} ({exc.code})", file=sys.stderr)
        return 1


def _dispatch(args: argparse.Namespace) -> int:
    if args.cmd == "run":
        return cmd_run(args)
    if args.cmd == "demo":
        return cmd_demo(args)
    if args.cmd == "validate":
        from revati.revatid.validate import cli as validate_cli

        return validate_cli.main(args)
    if args.cmd == "predictors":
        from revati.predictors.cli import main as predictors_main

        return predictors_main(args.args)
    sock = args.socket or str(default_socket())
    if args.cmd == "env":
        env = hook_env(sock, args.session, base={})
        for key in ("PYTHONPATH", "REVATI_HOOKS", "REVATI_SOCKET", "REVATI_SESSION"):
            if key in env:
                print(f"export {key}={env[key]}")
        return 0
    with Client(sock, timeout=30) as c:
        if args.cmd == "ping":
            t0 = time.perf_counter()
            r = c.request("ping")
            r["rtt_ms"] = (time.perf_counter() - t0) * 1e3
            _print(r, args.json, f"revatid pid {r['pid']} protocol v{r['version']}, "
                   f"{r['sessions']} sessions, {r['rtt_ms']:.2f} ms")
        elif args.cmd == "sessions":
            ss = c.request("session.list")["sessions"]
            _print(ss, args.json, "\n".join(map(_session_line, ss)) or "no sessions")
        elif args.cmd == "status":
            s = c.request("session.status", session=args.id)["session"]
            _print(s, args.json, _session_line(s) + "\n" + summary_text(s))
        elif args.cmd == "stop":
            s = c.request("session.stop", session=args.id)["session"]
            _print(s, args.json, summary_text(s))
        elif args.cmd == "trace":
            trace = c.request("trace", session=args.id)["trace"]
            Path(args.output).write_text(json.dumps(trace))
            print(f"wrote {len(trace['traceEvents'])} trace events to {args.output}")
        elif args.cmd == "attach":
            r = c.request("session.attach", session=args.session, pid=args.pid)
            _print(r, args.json, f"attached {', '.join(map(str, r['attached']))} to session "
                   f"{args.session}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
