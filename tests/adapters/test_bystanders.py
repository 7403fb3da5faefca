"""Which helper processes join a session only to wait (revati.adapters.session.is_bystander)."""

from __future__ import annotations

from revati.adapters.session import is_bystander


def test_the_resource_tracker_is_a_bystander() -> None:
    # as multiprocessing.resource_tracker.ensure_running starts it (spawn and fork contexts)
    assert is_bystander(["/venv/bin/python", "-B", "-c",
                         "from multiprocessing.resource_tracker import main;main(26)"])
    assert is_bystander(["python3.11", "-I", "-c",
                         "from multiprocessing.resource_tracker import main;main(7)"])


def test_other_processes_are_participants() -> None:
    assert not is_bystander(["python", "-m", "vllm.entrypoints.cli.main", "serve"])
    assert not is_bystander(["python", "-c", "from multiprocessing.spawn import spawn_main; "
                             "spawn_main(tracker_fd=5, pipe_handle=9)"])
    # a script's own -c argument is not the interpreter's
    assert not is_bystander(["python", "-X", "dev", "script.py", "-c",
                             "from multiprocessing.resource_tracker import main"])
    assert not is_bystander(["python", "-c"])
