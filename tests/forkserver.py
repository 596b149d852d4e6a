"""The suite's fork server: the programs the tests start, without each loading its modules
again.

A test run starts about four hundred of our processes (``python -m receiver``, ``worker``,
``worker.cli``, ``worker.dlq``, ``shared.migrate``), and each spent most of its start loading
modules: about 0.5–0.75 s of CPU on a two-core machine, the largest part of the suite's CPU.
This server, one per test process, loads the programs' modules once (what ``python -m`` loads
before ``main``), then forks a child per start. The child takes the descriptors it is sent as
its stdout and stderr, the test's environment, working directory and arguments, and runs the
program as ``python -m`` does (``runpy``, ``__name__ == "__main__"``): settings are read,
logging set up, connections opened and signal handlers installed in the child, as in a
program started alone. Each child is a process of its own (its own pid, signals, exit code,
sockets); only the module loading is shared. ``tests.support`` uses it for this checkout's
code (``Proc``: the services; ``run_command``: the command lines; ``run_to_exit``: start-up
failures); another checkout's code, and the tests that witness a real start
(``test_runtime``, ``test_settings``, ``test_platform_settings``), start with ``subprocess``.

Protocol, one Unix-socket connection per child, on a listening socket the test process made
and handed over (a start need not wait for the server to be ready): the test sends a JSON
request (module, arguments, environment, working directory) with the descriptors of its stdout
and stderr, then shuts its side for writing; the server answers the child's pid, then, once the
child has exited and it has reaped it, its exit code as ``subprocess`` reports it (a negative
number for a signal). The server exits when the test process that started it closes its stdin
(ends)."""

from __future__ import annotations

import contextlib
import gc
import importlib
import importlib.util
import json
import os
import runpy
import selectors
import socket
import sys
from typing import Any

# What the tests run with ``python -m``: the two services, and the command lines an operator
# runs (``worker.cli``, ``worker.dlq``, ``shared.migrate``).
PROGRAMS = ("receiver", "worker", "worker.cli", "worker.dlq", "shared.migrate")
REQUEST_LIMIT = 1 << 20


def preload() -> None:
    """Load what ``python -m receiver`` / ``worker`` load before their ``main`` (the modules
    hold the collector while they load, as the programs do; what was built is then frozen,
    so no child's collector walks it)."""
    gc.disable()
    for program in PROGRAMS:
        spec = importlib.util.find_spec(program)
        assert spec is not None, program
        code = f"{program}.__main__" if spec.submodule_search_locations is not None else program
        importlib.import_module(code)
        # What it imported stays loaded; the module itself is run afresh as ``__main__`` in
        # each child, as ``python -m`` runs it (runpy warns of one already imported).
        parent, _, name = code.rpartition(".")
        del sys.modules[code]
        delattr(sys.modules[parent], name)
    with contextlib.suppress(ImportError):
        importlib.import_module("uvloop")  # run_main's event loop, where installed
    gc.freeze()


def become(request: dict[str, Any], fds: list[int]) -> None:
    """In the forked child: take the descriptors sent as stdout and stderr (one for both, or
    one each), the request's environment, directory and arguments, and run the program as
    ``python -m`` does. Its exit (``SystemExit`` or an exception) propagates out of the
    server's loop to the interpreter, which exits as it would have for ``python -m``. Output is
    written unbuffered, as ``python -u`` writes it: the tests' programs run with
    ``PYTHONUNBUFFERED=1`` or to their exit, where no difference shows."""
    os.dup2(fds[0], 1)
    os.dup2(fds[-1], 2)
    for fd in set(fds):
        os.close(fd)
    stdin = os.open(os.devnull, os.O_RDONLY)
    os.dup2(stdin, 0)
    os.close(stdin)
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    sys.argv = [request["module"], *request["args"]]
    runpy.run_module(request["module"], run_name="__main__", alter_sys=True)
    raise SystemExit(0)


def serve(listener: socket.socket) -> None:
    """Answer the starts that come on ``listener`` (listening already: the test process made it,
    and the starts sent meanwhile wait in its backlog)."""
    preload()
    selector = selectors.DefaultSelector()
    selector.register(listener, selectors.EVENT_READ, "listener")
    selector.register(sys.stdin, selectors.EVENT_READ, "parent")
    children: dict[int, tuple[int, socket.socket]] = {}  # pidfd → (pid, its connection)
    while True:
        for key, _ in selector.select():
            if key.data == "parent":
                if not os.read(sys.stdin.fileno(), 4096):
                    return  # the test process has ended
            elif key.data == "listener":
                conn, _ = listener.accept()
                data, fds, _, _ = socket.recv_fds(conn, REQUEST_LIMIT, 2)
                while chunk := conn.recv(REQUEST_LIMIT):  # the rest, up to the test's shutdown
                    data += chunk
                pid = os.fork()
                if pid == 0:
                    selector.close()
                    listener.close()
                    for pidfd, (_, other) in children.items():
                        os.close(pidfd)
                        other.close()
                    conn.close()
                    become(json.loads(data), fds)
                for fd in fds:
                    os.close(fd)
                pidfd = os.pidfd_open(pid)
                children[pidfd] = (pid, conn)
                selector.register(pidfd, selectors.EVENT_READ, "child")
                conn.sendall(f"{pid}\n".encode())
            else:
                pidfd = key.fd
                pid, conn = children.pop(pidfd)
                selector.unregister(pidfd)
                os.close(pidfd)
                _, status = os.waitpid(pid, 0)
                with contextlib.suppress(OSError):  # unless the test no longer listens
                    conn.sendall(f"{os.waitstatus_to_exitcode(status)}\n".encode())
                conn.close()


if __name__ == "__main__":
    serve(socket.socket(fileno=int(sys.argv[1])))
