"""Start the app: ``python -m busi_study.app [--model PATH] [--reports DIR] [--port N]``.

Serves on 127.0.0.1 only (never on the network), headless, with usage statistics off and no
file watcher; prints the address. ``make app`` runs this.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from ..errors import EXIT_USER_ERROR

HOST = "127.0.0.1"
MAIN = Path(__file__).with_name("main.py")
#: Largest upload accepted by the server, in MB (Streamlit's ``server.maxUploadSize``).
MAX_UPLOAD_MB = 50


def keep_uploads_in_memory(max_mb: int = MAX_UPLOAD_MB) -> None:
    """Make the server's multipart parser keep every upload up to ``max_mb`` in RAM.

    Streamlit's server parses uploads with Starlette, which spools a file part larger than
    1 MB to an (unlinked) temporary file on disk; raising the spool size to the upload limit
    keeps uploads in memory only, as the app promises. Called by ``main.py`` in the server.
    """
    try:
        from starlette.formparsers import MultiPartParser
    except ImportError:  # an older Streamlit on Tornado: it buffers uploads in memory itself
        return
    MultiPartParser.spool_max_size = max(MultiPartParser.spool_max_size, (max_mb + 1) * 1024 * 1024)


def free_port(preferred: int | None = None) -> int:
    """``preferred`` if it can be bound on 127.0.0.1, else a free port the OS picks."""
    for port in ([preferred] if preferred else []) + [0]:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind((HOST, port))
            except OSError:
                continue
            return int(s.getsockname()[1])
    raise OSError("no free port on 127.0.0.1")


def streamlit_command(port: int, model: str | None = None, reports: str | None = None,
                      python: str = sys.executable) -> list[str]:
    """The ``streamlit run`` command line of the app."""
    cmd = [python, "-m", "streamlit", "run", str(MAIN),
           "--server.address", HOST, "--server.port", str(port), "--server.headless", "true",
           "--browser.gatherUsageStats", "false", "--server.fileWatcherType", "none",
           "--server.runOnSave", "false", "--server.maxUploadSize", str(MAX_UPLOAD_MB), "--client.toolbarMode", "viewer", "--"]
    if model:
        cmd += ["--model", str(model)]
    if reports:
        cmd += ["--reports", str(reports)]
    return cmd


def app_env() -> dict[str, str]:
    """Environment of the server: quiet TensorFlow; ``busi_study`` importable from this checkout."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    src = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = src + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def keep_tensorflow_caches() -> None:
    """Stop Streamlit from clearing the Keras session after every script run.

    Streamlit's script runner calls ``keras.backend.clear_session()`` after each run (meant for
    apps that build models in the script); with TensorFlow that clears the kernel cache, so the
    first model call of every rerun re-creates its kernels: about 0.35 s of CPU, 1–3 s of wall
    time on the study's loaded 2-core machine, against 0.01 s otherwise. The app builds no model
    in the script (it loads them once, ``st.cache_resource``), so the Keras part is skipped;
    matplotlib figures are still closed as Streamlit does. Idempotent; a Streamlit without that
    hook is left alone.
    """
    try:
        from streamlit.runtime.scriptrunner import script_runner
    except ImportError:
        return
    current = getattr(script_runner, "_clean_problem_modules", None)
    if current is None or getattr(current, "keeps_keras_session", False):
        return

    def clean_without_keras() -> None:
        if "matplotlib.pyplot" in sys.modules:
            sys.modules["matplotlib.pyplot"].close("all")

    clean_without_keras.keeps_keras_session = True  # type: ignore[attr-defined]
    script_runner._clean_problem_modules = clean_without_keras


@contextlib.contextmanager
def running_server(model: str | None = None, reports: str | None = None, cwd: Path | None = None,
                   env: dict[str, str] | None = None, log: Path | None = None, startup_s: float = 90) -> Iterator[str]:
    """Start the app on a free 127.0.0.1 port, wait until healthy, yield its URL, stop it.

    ``cwd``/``env`` are the server's working folder and extra environment (tests give it an
    empty folder and ``TMPDIR``); its output goes to ``log`` (default: discarded).
    """
    port = free_port()
    url = f"http://{HOST}:{port}"
    with open(log or os.devnull, "wb") as out:
        proc = subprocess.Popen(streamlit_command(port, model, reports), cwd=cwd, env={**app_env(), **(env or {})},
                                stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + startup_s
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"the app server exited with code {proc.returncode}" + (f"; see {log}" if log else ""))
            try:
                with urllib.request.urlopen(url + "/_stcore/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"the app server was not ready after {startup_s:.0f} s")
            time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def _check_options(model: str | None, reports: str | None) -> str | None:
    """What is wrong with ``--model`` / ``--reports`` (one line with what to do), or None."""
    hint = "give a .keras file exported by the study (reports/<run>/models/NAME.keras), or leave --model out"
    if model is not None:
        path = Path(model).expanduser()
        if not str(model).strip():
            return f"--model is empty — {hint}"
        if not path.exists():
            return f"model file not found: {path} — {hint}"
        if path.is_dir() or path.suffix.lower() != ".keras":
            return f"--model {path} is not a .keras model file — {hint}"
    if reports is not None and not Path(reports).expanduser().is_dir():
        return f"--reports {reports}: no such folder — give the reports folder holding latest/ (default: reports/)"
    return None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m busi_study.app", description="Serve the study's app on 127.0.0.1.")
    p.add_argument("--model", help="a .keras model file (default: the best exported model of reports/latest)")
    p.add_argument("--reports", help="the reports folder holding latest/ (default: the repository's reports/)")
    p.add_argument("--port", type=int, default=8501, help="port (default 8501, or a free one if it is taken)")
    args = p.parse_args(argv)
    problem = _check_options(args.model, args.reports)
    if problem:  # before any server starts: one line, exit 2 (errors.EXIT_USER_ERROR)
        print(f"error: {problem}", file=sys.stderr)
        return EXIT_USER_ERROR
    port = free_port(args.port)
    print(f"BUSI study app: http://{HOST}:{port}   (research use only, not a medical device; Ctrl+C stops it)", flush=True)
    try:
        return subprocess.call(streamlit_command(port, args.model, args.reports), env=app_env())
    except KeyboardInterrupt:
        return 0
