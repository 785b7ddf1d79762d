"""A registration in a worker process (``python -m DeepRegistrationLib register ...``), polled from Slicer's main
thread; the worker's progress arrives as JSON lines and its outputs as files read back when it has finished."""

from __future__ import annotations

import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import DeepRegError

if TYPE_CHECKING:  # the logic creates the handle; annotations only
    from .logic import PreparedJob, RegistrationLogic, RegistrationOutputs

__all__ = ["BackgroundRegistration", "default_python_executable", "CANCEL_FILE", "worker_popen_options"]

#: Created in the job folder to ask the worker to stop (``deepreg register --cancel-file``): works on every
#: platform, and lets the worker remove its own temporary files before it exits.
CANCEL_FILE = "cancel-requested"

# Windows process-creation flags (``subprocess`` defines them only on Windows)
_CREATE_NEW_PROCESS_GROUP = 0x00000200
_CREATE_NO_WINDOW = 0x08000000


def worker_popen_options(os_name: str = os.name) -> dict:
    """``subprocess.Popen`` keywords for the worker: its own process group (cancel stops the whole tree) and, on
    Windows, no console window (``CREATE_NO_WINDOW`` and a hidden ``STARTUPINFO``, as SlicerElastix does)."""
    if os_name != "nt":
        return {"start_new_session": True}
    options: dict = {"creationflags": _CREATE_NEW_PROCESS_GROUP | _CREATE_NO_WINDOW}
    if hasattr(subprocess, "STARTUPINFO"):
        info = subprocess.STARTUPINFO()
        info.dwFlags |= subprocess.STARTF_USESHOWWINDOW
        info.wShowWindow = 0  # SW_HIDE
        options["startupinfo"] = info
    return options


def default_python_executable() -> str:
    """``PythonSlicer`` inside Slicer (Slicer's Python without the GUI), else this interpreter."""
    return shutil.which("PythonSlicer") or sys.executable


class BackgroundRegistration:
    """A registration running in a worker process (``python -m DeepRegistrationLib register ...``).

    ``state`` is ``running``, ``completed``, ``failed`` or ``cancelled``. Call :meth:`poll` regularly
    from the main thread (in Slicer a QTimer does it): it forwards progress and, when the worker has
    finished, creates the result nodes. :meth:`cancel` stops the worker (SIGTERM, then SIGKILL after a
    grace period); the scene is then left as it was and no temporary file is left behind.
    """

    def __init__(self, logic: RegistrationLogic, job: PreparedJob, args: list[str], folder: Path,
                 on_progress, on_finished, python: str, keep_files: bool) -> None:
        self.logic, self.job, self.folder = logic, job, folder
        self.on_progress, self.on_finished, self.keep_files = on_progress, on_finished, keep_files
        self.state = "running"
        self.error = ""
        self.outputs: RegistrationOutputs | None = None
        self.last_progress: dict = {}
        self.figures: dict = {}
        self.log: list[str] = []
        self._events: queue.Queue = queue.Queue()
        self._cancel_requested = False
        env = dict(os.environ)
        package_root = str(Path(__file__).resolve().parents[2])
        env["PYTHONPATH"] = os.pathsep.join([package_root] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
        env["PYTHONUNBUFFERED"] = "1"
        self.command = [python, "-m", "DeepRegistrationLib"] + args
        self.process = subprocess.Popen(self.command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                        env=env, **worker_popen_options())
        self._readers = [threading.Thread(target=self._read, args=(self.process.stdout, "stdout"), daemon=True),
                         threading.Thread(target=self._read, args=(self.process.stderr, "stderr"), daemon=True)]
        for reader in self._readers:
            reader.start()

    def _read(self, stream, name: str) -> None:
        for line in stream:
            self._events.put((name, line.rstrip("\n")))
        stream.close()

    @property
    def running(self) -> bool:
        return self.state == "running"

    def cancel(self, grace_s: float = 5.0) -> None:
        """Stop the worker; nothing is added to the scene.

        The worker is asked first (the cancel file, and SIGTERM where there are signals): it stops at its next
        step and removes its own temporary files. Only a worker still alive after ``grace_s`` seconds has its
        process tree killed, and then the temporary files it may have left in the job folder are removed here."""
        if self.state != "running":
            return
        self._cancel_requested = True
        killed = False
        try:
            (self.folder / CANCEL_FILE).touch()
            if os.name != "nt":
                os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                if os.name == "nt":
                    subprocess.run(["taskkill", "/F", "/T", "/PID", str(self.process.pid)], capture_output=True,
                                   **worker_popen_options())
                else:
                    os.killpg(self.process.pid, signal.SIGKILL)
                killed = True
        except (ProcessLookupError, PermissionError, OSError):
            pass
        self.process.wait()
        if killed:
            from ..io.atomic import remove_temporaries

            remove_temporaries(self.folder)
        self.poll()

    def poll(self) -> bool:
        """Handle pending output; finish when the worker has exited. Returns True while running."""
        if self.state != "running":
            return False
        self._drain()
        if self.process.poll() is None:
            return True
        for reader in self._readers:  # the worker has exited: its pipes reach EOF at once
            reader.join(timeout=5.0)
        self._drain()
        try:
            if self._cancel_requested:
                self.state = "cancelled"
            elif self.process.returncode != 0:
                self.state = "failed"
                errors = [line for line in self.log if line.startswith("deepreg:")]
                self.error = (errors[-1] if errors else (self.log[-1] if self.log else
                              f"the registration process exited with code {self.process.returncode}"))
                self.error = self.error.replace("deepreg: error: ", "")
            else:
                self.outputs = self._finish()
                self.state = "completed"
        except DeepRegError as err:
            self.state, self.error = "failed", str(err)
        finally:
            if not self.keep_files:
                shutil.rmtree(self.folder, ignore_errors=True)
        if self.on_finished is not None:
            self.on_finished(self)
        return False

    def wait(self, timeout_s: float | None = None, interval_s: float = 0.05) -> str:
        """Poll until the worker has finished (or ``timeout_s`` passed, then cancel); returns ``state``."""
        import time

        start = time.monotonic()
        while self.poll():
            if timeout_s is not None and time.monotonic() - start > timeout_s:
                self.cancel()
                break
            time.sleep(interval_s)
        return self.state

    def _drain(self) -> None:
        while True:
            try:
                name, line = self._events.get_nowait()
            except queue.Empty:
                return
            if name == "stdout" and line.startswith("{"):
                try:
                    event = json.loads(line)
                except json.JSONDecodeError:
                    self.log.append(line)
                    continue
                if event.get("event") == "progress":
                    self.last_progress = event
                    if self.on_progress is not None:
                        self.on_progress(event)
                elif event.get("event") == "done":
                    self.figures = event.get("figures", {})
            elif line.strip():
                self.log.append(line)

    def _finish(self) -> RegistrationOutputs:
        from ..io import read_image, read_transform

        folder, job = self.folder, self.job
        transform = read_transform(folder / "transform.h5")
        warped = read_image(folder / "warped.nrrd") if job.output_volume_node is not None else None
        jacobian = read_image(folder / "jacobian.nrrd") if job.jacobian_node is not None else None
        inverse = read_transform(folder / "inverse.h5") if job.inverse_node is not None else None
        return self.logic.publish(job, transform, warped, jacobian, self.figures, inverse)

