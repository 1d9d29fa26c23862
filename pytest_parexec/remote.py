"""Code that runs inside a worker process, and the value codec both sides share.

This module is sent to workers with ``gateway.remote_exec(module)``, so it must
stay self-contained: standard library only, no imports from pytest_parexec, and
only built-in types cross the channel. The pytest process imports it too, for
:func:`encode`, :func:`decode`, :func:`start_call` and :func:`finish_call`.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import os
import pathlib
import socket
import sys
import time
import traceback
from collections.abc import Callable, Generator
from typing import Any

#: Key of the one-entry dict that tags values execnet cannot carry as they are.
TAG = "__parexec_tag__"

PLAIN_TYPES = (type(None), bool, int, float, complex, str, bytes, bytearray)
ALLOWED = (
    "None, bool, int, float, complex, str, bytes, bytearray, list, tuple, dict, set, "
    "frozenset and pathlib paths, nested freely"
)


class EncodeError(TypeError):
    """A value that cannot cross a process boundary."""


#: execnet packs negative ints in 32 bits: smaller ones travel as text.
_MIN_INT = -(2**31)


def _hashable_plain(encoded: Any) -> bool:
    """Whether an encoded key or member can stay in a dict or set as it is."""
    if isinstance(encoded, tuple | frozenset):
        return all(_hashable_plain(item) for item in encoded)
    return not isinstance(encoded, dict)


def encode(value: Any, name: str, where: str = "the value") -> Any:
    """Turn ``value`` into built-in types that execnet can send; tag the rest.

    Raises EncodeError naming the operation ``name`` and the offending part.
    """
    kind = type(value)
    if kind is int and value < _MIN_INT:
        return {TAG: ("int", str(value))}
    if kind in PLAIN_TYPES and kind is not bytearray:
        return value
    if kind is bytearray:
        return {TAG: ("bytearray", bytes(value))}
    if isinstance(value, pathlib.PurePath):
        # A subclass of the user's arrives as the pathlib class it derives from.
        base = next(c for c in kind.__mro__ if c.__module__ == "pathlib")
        return {TAG: ("path", base.__name__, str(value))}
    if kind is list or kind is tuple:
        items = [encode(v, name, f"{where}[{i}]") for i, v in enumerate(value)]
        return items if kind is list else tuple(items)
    if kind is dict:
        pairs = [
            (encode(k, name, f"a key of {where}"), encode(v, name, f"{where}[{k!r}]"))
            for k, v in value.items()
        ]
        if TAG in value or not all(_hashable_plain(k) for k, _ in pairs):
            return {TAG: ("dict", pairs)}
        return dict(pairs)
    if kind is set or kind is frozenset:
        members = [encode(v, name, f"a member of {where}") for v in value]
        if not all(_hashable_plain(m) for m in members):
            return {TAG: (kind.__name__, members)}
        return kind(members)
    raise EncodeError(
        f"batchable operation {name!r} returned a value that cannot cross to the pytest "
        f"process: {where} is of type {kind.__module__}.{kind.__qualname__}. Return plain data "
        f"({ALLOWED}); build live objects such as connections or clients in an ordinary "
        f"fixture that depends on {name!r}"
    )


def decode(value: Any) -> Any:
    """The inverse of :func:`encode`."""
    kind = type(value)
    if kind is list:
        return [decode(v) for v in value]
    if kind is tuple:
        return tuple(decode(v) for v in value)
    if kind is dict:
        if len(value) == 1 and TAG in value:
            tag = value[TAG]
            if tag[0] == "path":
                return getattr(pathlib, tag[1])(tag[2])
            if tag[0] == "int":
                return int(tag[1])
            if tag[0] == "bytearray":
                return bytearray(tag[1])
            if tag[0] == "dict":
                return {decode(k): decode(v) for k, v in tag[1]}
            members = [decode(m) for m in tag[1]]
            return set(members) if tag[0] == "set" else frozenset(members)
        return {k: decode(v) for k, v in value.items()}
    return value


class TeardownError(RuntimeError):
    """A generator operation that did not yield exactly once."""


def start_call(function: Callable[..., Any], kwargs: dict[str, Any]) -> tuple[Any, Any]:
    """Call an operation; for a generator, run it to its yield. Return (value, state)."""
    if not inspect.isgeneratorfunction(function):
        return function(**kwargs), None
    gen = function(**kwargs)
    try:
        value = next(gen)
    except StopIteration:
        raise TeardownError(
            f"generator {function.__name__!r} returned without yielding; a batchable "
            "generator must yield its value exactly once"
        ) from None
    return value, gen


def finish_call(state: Generator[Any] | None) -> None:
    """Run the code after a generator operation's yield (its teardown)."""
    if state is None:
        return
    try:
        next(state)
    except StopIteration:
        return
    state.close()
    raise TeardownError(
        f"generator {getattr(state, '__name__', '?')!r} yielded more than once; a batchable generator "
        "must yield its value exactly once"
    )


#: This module's file name as its frames show it, where it was imported from a file.
_THIS_FILE = globals().get("__file__") or "<remote exec>"


def _is_ours(filename: str) -> bool:
    """A frame of pytest-parexec (this module imported or sent as source, or the
    in-process runner): users need only their own frames."""
    return filename in (_THIS_FILE, "<remote exec>") or "/pytest_parexec/" in filename.replace("\\", "/")


def format_error(exc: BaseException) -> str:
    """The traceback of ``exc`` as the user needs it: without this module's frames.

    An EncodeError says all there is to say in its message, so it has no traceback.
    """
    if isinstance(exc, EncodeError) or getattr(exc, "parexec_no_traceback", False):
        return f"{type(exc).__name__}: {exc}\n"
    report = traceback.TracebackException.from_exception(exc)
    frames = [frame for frame in report.stack if not _is_ours(frame.filename)]
    report.stack = traceback.StackSummary.from_list(frames)
    return "".join(report.format())


# -- the worker side --------------------------------------------------------


def _die_with_parent() -> None:
    """On Linux, ask the kernel to kill this worker when the pytest process dies."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes
        import signal

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG
    except Exception:  # noqa: BLE001  # pragma: no cover - best effort on exotic libcs
        pass


def _load_module(module: str, file: str) -> Any:
    """Import the operation's module as pytest did, or from its file if that fails."""
    path = os.path.abspath(file)

    def same(mod: Any) -> bool:
        mod_file = getattr(mod, "__file__", None)
        return isinstance(mod_file, str) and os.path.abspath(mod_file) == path

    mod = sys.modules.get(module)
    if mod is not None and same(mod):
        return mod
    try:
        mod = importlib.import_module(module)
    except Exception:  # noqa: BLE001 - fall back to loading the file below
        mod = None
    if mod is not None and same(mod):
        return mod
    # conftest.py files and modules imported with --import-mode=importlib have names
    # that do not import on sys.path: load them from their file, once.
    key = "_parexec_" + "".join(c if c.isalnum() else "_" for c in path)
    if key in sys.modules:
        return sys.modules[key]
    spec = importlib.util.spec_from_file_location(key, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import {module!r} from {path}")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[key] = mod
    try:
        spec.loader.exec_module(mod)
    except BaseException:
        del sys.modules[key]
        raise
    return mod


class _Capture:
    """Capture the worker's file descriptors 1 and 2 into a file while an operation runs."""

    def __init__(self, directory: str) -> None:
        self.path = os.path.join(directory, "output")

    def __enter__(self) -> _Capture:
        sys.stdout.flush()
        sys.stderr.flush()
        self.file = open(self.path, "w+b")
        self.saved = (os.dup(1), os.dup(2))
        os.dup2(self.file.fileno(), 1)
        os.dup2(self.file.fileno(), 2)
        return self

    def __exit__(self, *exc: object) -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(self.saved[0], 1)
        os.dup2(self.saved[1], 2)
        os.close(self.saved[0])
        os.close(self.saved[1])
        self.file.seek(0)
        self.output = self.file.read().decode("utf-8", "replace")
        self.file.close()


class Worker:
    """Serves run and teardown requests from the pytest process on one channel."""

    def __init__(self, channel: Any, init: dict[str, Any]) -> None:
        self.channel = channel
        self.capture_dir: str = init["capture_dir"]
        self.states: dict[str, Any] = {}

    def run(self, msg: dict[str, Any]) -> dict[str, Any]:
        name = msg["name"]
        started = time.perf_counter()
        reply: dict[str, Any] = {"kind": "result", "id": msg["id"], "name": name}
        capture = _Capture(self.capture_dir)
        with capture:
            state = None
            try:
                mod = _load_module(msg["module"], msg["file"])
                obj = getattr(mod, msg["attribute"])
                function = getattr(obj, "__parexec_function__", obj)
                kwargs = {k: decode(v) for k, v in msg["args"].items()}
                if msg["tmp_path"] is not None:
                    os.makedirs(msg["tmp_path"], exist_ok=True)
                    kwargs["tmp_path"] = pathlib.Path(msg["tmp_path"])
                value, state = start_call(function, kwargs)
                reply["value"] = encode(value, name)
            except BaseException as exc:  # noqa: BLE001 - everything is reported
                reply.update(ok=False, error=format_error(exc), message=one_line(exc))
                if state is not None:
                    # The value is unusable: release what the generator holds now.
                    try:
                        finish_call(state)
                    except BaseException:  # noqa: BLE001 - the first error is the one to show
                        pass
            else:
                reply.update(ok=True, holds=state is not None)
                if state is not None:
                    self.states[name] = state
        reply["duration"] = time.perf_counter() - started
        reply["output"] = capture.output
        return reply

    def teardown(self, msg: dict[str, Any]) -> dict[str, Any]:
        name = msg["name"]
        reply: dict[str, Any] = {"kind": "teardown", "name": name, "ok": True}
        capture = _Capture(self.capture_dir)
        with capture:
            try:
                finish_call(self.states.pop(name, None))
            except BaseException as exc:  # noqa: BLE001
                reply.update(ok=False, error=format_error(exc), message=one_line(exc))
        reply["output"] = capture.output
        return reply

    def serve(self) -> None:
        while True:
            msg = self.channel.receive()
            kind = msg["kind"]
            if kind == "run":
                self.channel.send(self.run(msg))
            elif kind == "teardown":
                self.channel.send(self.teardown(msg))
            elif kind == "stop":
                _save_coverage()
                self.channel.send({"kind": "stopped"})
                return
            else:  # pragma: no cover - a protocol bug
                raise ValueError(f"unknown message kind {kind!r}")


def one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def _start_coverage(options: dict[str, Any] | None) -> None:
    """Measure this worker like the pytest process, into a suffixed data file."""
    if not options:
        return
    import coverage

    if coverage.Coverage.current() is not None:
        return  # already started for this process (coverage's subprocess patch)
    cov = coverage.Coverage(
        data_file=options["data_file"],
        data_suffix=f"{options['suffix']}.{os.getpid()}",
        config_file=options.get("config_file") or False,
        source=options.get("source"),
        branch=options.get("branch"),
        include=options.get("include"),
        omit=options.get("omit"),
    )
    # A worker that runs nothing measurable must not print coverage.py's warnings
    # into the middle of pytest's output.
    cov.config.disable_warnings.extend(["no-data-collected", "module-not-imported", "module-not-measured"])
    cov.start()


def _save_coverage() -> None:
    """Write this worker's coverage data now: it may be killed rather than exit."""
    if "coverage" not in sys.modules:
        return
    import coverage

    cov = coverage.Coverage.current()
    if cov is not None:
        cov.stop()
        cov.save()


def _init_worker(init: dict[str, Any]) -> dict[str, Any]:
    _start_coverage(init.get("coverage"))
    if init.get("own_process_group"):
        # A terminal's Ctrl-C must reach only pytest, which then runs the
        # teardowns here before stopping this worker and its children.
        os.setpgrp()
        _die_with_parent()
    if init.get("cwd"):
        os.chdir(init["cwd"])
    elif os.getcwd() not in sys.path:
        # A remote host: the project is the directory it started in (its chdir).
        sys.path.insert(0, os.getcwd())
    for entry in reversed(init.get("sys_path") or []):
        if entry not in sys.path:
            sys.path.insert(0, entry)
    os.environ.update(init.get("env") or {})
    if init.get("capture_dir"):
        os.makedirs(init["capture_dir"], exist_ok=True)
    else:
        import tempfile

        init["capture_dir"] = tempfile.mkdtemp(prefix="parexec-worker-")
        init["remove_capture_dir"] = True
    for module in init.get("preload") or []:
        # Importing pytest takes a few hundred milliseconds: do it while pytest collects.
        try:
            importlib.import_module(module)
        except Exception:  # noqa: BLE001 - the operation's own import will report it
            continue
    return {
        "kind": "ready",
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "python": sys.version.split()[0],
        "cwd": os.getcwd(),
    }


# -- the fork server ----------------------------------------------------------
#
# Starting a worker costs a Python process that imports pytest: about 0.15 s of
# CPU each. On Linux, one "zygote" worker pays it once and forks the others; each
# child listens on a loopback socket for exactly one execnet socket gateway from
# the pytest process, in its own process group, and dies with the zygote.


def _restart_coverage_after_fork() -> None:
    """A child must not write the zygote's coverage data file: restart measurement."""
    if "coverage" not in sys.modules:
        return
    import coverage

    if coverage.Coverage.current() is None:
        return
    restart = getattr(getattr(coverage, "control", None), "_after_fork_in_child", None)
    if restart is not None:
        restart()  # coverage.py's own after-fork handler (its patch=fork uses it)
    else:  # pragma: no cover - older coverage.py: stop rather than clobber the parent's data
        coverage.Coverage.current().stop()  # type: ignore[union-attr]


def peer_is_same_user(sock: socket.socket) -> bool:
    """Whether the other end of a loopback TCP connection belongs to this process's user.

    Linux lists every TCP socket with its owner in /proc/net/tcp: the peer's is the
    entry whose local port is the peer's port and whose remote port is ours. If the
    tables cannot be read, the connection is taken (there is nothing to check with).
    """
    peer_port = sock.getpeername()[1]
    our_port = sock.getsockname()[1]
    readable = False
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table, encoding="ascii") as stream:
                rows = stream.read().splitlines()[1:]
        except OSError:
            continue
        readable = True
        for row in rows:
            fields = row.split()
            if len(fields) < 8:
                continue
            local_port = int(fields[1].rsplit(":", 1)[1], 16)
            remote_port = int(fields[2].rsplit(":", 1)[1], 16)
            if (local_port, remote_port) == (peer_port, our_port):
                return int(fields[7]) == os.getuid()
    return not readable


def _accept_own(serversock: Any, timeout: float) -> Any:
    """The first connection from a process of this user (another user's is closed):
    what arrives on it is run as code."""
    deadline = time.monotonic() + timeout
    while True:
        serversock.settimeout(max(0.0, deadline - time.monotonic()))
        clientsock, _ = serversock.accept()
        if peer_is_same_user(clientsock):
            return clientsock
        clientsock.close()


def _child(serversock: Any, inherited: list[int]) -> None:
    """In a forked child: serve one execnet socket gateway, then exit."""
    try:
        import signal

        os.setpgrp()
        _die_with_parent()
        # An operation is interrupted with SIGINT (and the fork server ignores it).
        signal.signal(signal.SIGINT, signal.default_int_handler)
        for fd in inherited:  # the zygote's pipes to pytest: not ours to hold open
            try:
                os.close(fd)
            except OSError:
                pass
        _restart_coverage_after_fork()
        clientsock = _accept_own(serversock, 60)
        serversock.close()
        clientsock.settimeout(None)
        with clientsock.makefile("rb") as stream:
            source = eval(stream.readline().rstrip())
        exec(compile(source + "\n", "<parexec worker>", "exec"), {"clientsock": clientsock})
    finally:
        os._exit(0)


def module_attribute(module: object, name: str) -> object:
    """``module.name`` from the module's namespace, or None: never runs code (a lazily
    loaded module would load on attribute access; sys.modules may hold other objects)."""
    try:
        namespace = object.__getattribute__(module, "__dict__")
        return namespace.get(name) if isinstance(namespace, dict) else None
    except Exception:  # noqa: BLE001 - no namespace: nothing to say about it
        return None


def _installed_dirs() -> tuple[str, ...]:
    """Directories of the Python installation and of installed packages."""
    import site
    import sysconfig

    dirs = {sysconfig.get_path(name) for name in ("stdlib", "platstdlib", "purelib", "platlib")}
    dirs.update(site.getsitepackages() if hasattr(site, "getsitepackages") else [])
    dirs.add(site.getusersitepackages())
    return tuple(os.path.join(os.path.abspath(d), "") for d in dirs if d)


def _project_module(name: str, module: Any, rootdir: str, installed: tuple[str, ...]) -> bool:
    """Whether ``module`` is the project's own code: a Python file under the rootdir
    that is not part of an installation (a virtual environment inside the project)."""
    if name == "__main__" or name.startswith("pytest_parexec"):
        return False
    file = module_attribute(module, "__file__")
    if not isinstance(file, str) or not file.endswith((".py", ".pyc")):
        return False  # extension modules cannot always be loaded twice
    path = os.path.abspath(file)
    if not path.startswith(rootdir) or path.startswith(installed):
        return False
    inside = os.path.relpath(path, rootdir).split(os.sep)
    return not {"site-packages", "dist-packages"} & set(inside)


def fork_zygote(rootdir: str) -> tuple[int, socket.socket]:
    """Fork the calling process, which must have no other thread, into a fork server.

    The pytest process has imported pytest, its plugins and what the conftest.py
    files import: workers forked from this copy start without importing any of it
    again. The project's own modules are dropped from the copy's ``sys.modules``,
    so each worker imports them afresh, as a worker started from scratch would.
    Returns the server's pid and the socket to send it requests on (JSON lines,
    see :func:`_fork_request`). Raises OSError if the fork fails.
    """
    import gc
    import signal

    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()  # else what is buffered would be written again by every copy
        except Exception:  # noqa: BLE001 - a closed or odd stream: nothing to repeat
            pass
    ours, theirs = socket.socketpair()
    try:
        pid = os.fork()
    except OSError:
        ours.close()
        theirs.close()
        raise
    if pid:
        theirs.close()
        return pid, ours
    code = 0
    try:
        # Ctrl-C is pytest's to handle (it stops the workers), also before setpgrp.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        os.setpgrp()
        _die_with_parent()
        ours.close()
        _stop_inherited_coverage()
        null = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1):  # stray output between operations reaches no terminal
            os.dup2(null, fd)
        os.close(null)
        sys.stdin, sys.stdout, sys.stderr = sys.__stdin__, sys.__stdout__, sys.__stderr__
        root = os.path.join(os.path.abspath(rootdir), "")
        installed = _installed_dirs()
        project = [name for name, m in list(sys.modules.items()) if _project_module(name, m, root, installed)]
        # Held, not freed: a module's objects must not run their finalizers in this copy
        # (a temporary directory made at import would be deleted under pytest's feet).
        dropped = [sys.modules.pop(name) for name in project]
        for name, attr in (
            ("pytest_parexec.operations", "_definition_listeners"),
            ("pytest_parexec.generators", "_generator_listeners"),
        ):
            # Definitions in a worker are announced to nobody (the pytest session is not here).
            listeners = getattr(sys.modules.get(name), attr, None)
            if isinstance(listeners, list):
                listeners.clear()
        gc.freeze()  # and keep the shared pages shared
        _serve_forks(theirs)
        del dropped
    except BaseException:  # noqa: BLE001 - said on stderr; pytest falls back to another fork server
        traceback.print_exc()
        code = 1
    finally:
        os._exit(code)


def _stop_inherited_coverage() -> None:
    """A copy of a measured pytest process must not write the pytest process's data:
    stop the measurement, so that each worker starts its own (``_start_coverage``)."""
    if "coverage" not in sys.modules:
        return
    import coverage

    for _ in range(8):  # every started instance, most recent first
        cov = coverage.Coverage.current()
        if cov is None:
            return
        cov.stop()


def _serve_forks(conn: socket.socket) -> None:
    """Answer fork, status and stop requests, one JSON line each, until stop or EOF."""
    import json

    with conn.makefile("rb") as requests:
        for line in requests:
            msg = json.loads(line)
            reply = _fork_request(msg, [conn.fileno()])
            if reply is None:
                return
            conn.sendall(json.dumps(reply).encode() + b"\n")


def _fork_request(msg: dict[str, Any], inherited: list[int]) -> dict[str, Any] | None:
    if msg["kind"] == "fork":
        serversock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        serversock.bind(("127.0.0.1", 0))
        serversock.listen(1)
        port = serversock.getsockname()[1]
        pid = os.fork()
        if pid == 0:
            _child(serversock, inherited)
        serversock.close()
        return {"kind": "forked", "pid": pid, "port": port}
    if msg["kind"] == "status":
        try:
            _, status = os.waitpid(msg["pid"], 0)
            code: int | None = os.waitstatus_to_exitcode(status)
        except ChildProcessError:
            code = None
        return {"kind": "status", "code": code}
    return None  # stop


def serve_zygote(channel: Any) -> None:
    """The fork server: prepare once, then fork a worker per request."""
    init = channel.receive()
    ready = _init_worker(init)
    io = channel.gateway._io
    inherited = [
        f.fileno() for f in (getattr(io, "outfile", None), getattr(io, "infile", None)) if f is not None
    ]
    channel.send(ready)
    while True:
        reply = _fork_request(channel.receive(), inherited)
        if reply is None:
            return
        channel.send(reply)


def serve_channel(channel: Any) -> None:
    """A worker's whole life: answer the init message, then serve until told to stop."""
    init = channel.receive()
    channel.send(_init_worker(init))
    try:
        Worker(channel, init).serve()
    finally:
        _save_coverage()
        if init.get("remove_capture_dir"):
            import shutil

            shutil.rmtree(init["capture_dir"], ignore_errors=True)


if __name__ == "__channelexec__":
    serve_channel(channel)  # type: ignore[name-defined]  # noqa: F821
