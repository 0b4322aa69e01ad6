"""`resexp app`: the Streamlit page (resexp/app.py, which needs Streamlit even to be imported)
served by `streamlit run` in a child process, and that process stopped cleanly on Ctrl-C."""

from __future__ import annotations

import importlib.util
import signal
import subprocess
import sys
from pathlib import Path

from resexp.errors import EXIT_INTERRUPTED, ResexpError

PAGE = Path(__file__).with_name("app.py")


def serve(port: int) -> int:
    """Serve the page on http://localhost:PORT until the server ends or Ctrl-C; the exit code
    (the server's, or 130 after Ctrl-C)."""
    if importlib.util.find_spec("streamlit") is None:
        raise ResexpError("resexp app needs Streamlit: pip install 'resexp[app]'")
    command = [sys.executable, "-m", "streamlit", "run", str(PAGE), "--server.headless", "true",
               "--server.port", str(port)]
    print(f"resexp: serving {PAGE} on http://localhost:{port} (Ctrl-C stops it)", file=sys.stderr)
    process = subprocess.Popen(command)
    try:
        return process.wait()
    except KeyboardInterrupt:
        # From a terminal the server got the same SIGINT; otherwise pass it on. Then let it shut down.
        try:
            process.wait(timeout=1)
        except subprocess.TimeoutExpired:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        return EXIT_INTERRUPTED
