"""Checkpoints of a run whose artifact store is remote (an `mlflow server` with a served
artifact root, S3, ...): written to a local staging folder, uploaded in the background,
downloaded again by a run that continues elsewhere.

Three rules keep a retry from losing work:
- both `last.pt` and `previous.pt` are uploaded, so the fallback to the previous
  checkpoint (a corrupt `last.pt`) exists on the store too;
- a download that fails is retried, then raised: only the store saying that there is no
  checkpoint means "start from step 0" (a retry that started over would overwrite the
  good checkpoint with its first one);
- staging folders are removed when the run ends, and those of processes that died are
  swept when a new one is made, so a study does not fill /tmp.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from began.checkpoint import CHECKPOINT_NAME, PREVIOUS_NAME
from began.errors import TrackingError, first_line
from began.retry import retrying

ARTIFACT_DIR = "checkpoints"
STAGING_PREFIX = "began-staging-"
_STAGING_PID = re.compile(rf"^{STAGING_PREFIX}(\d+)-")


class CheckpointDownloadError(TrackingError):
    """The store has a checkpoint of this run but would not hand it over."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process: alive
    return True


def sweep_stale_staging() -> None:
    """Remove the staging folders of processes that no longer run (killed mid-run)."""
    for folder in Path(tempfile.gettempdir()).glob(f"{STAGING_PREFIX}*"):
        match = _STAGING_PID.match(folder.name)
        if match and int(match.group(1)) != os.getpid() and not _alive(int(match.group(1))):
            shutil.rmtree(folder, ignore_errors=True)


class RemoteCheckpoints:
    """A run's checkpoints on their way to and from a remote artifact store.

    `client` is the run's MlflowClient; uploads are handed to `enqueue` (the tracker's
    background writer), so a training step never waits on the network.
    """

    def __init__(self, client: Any, run_id: str, enqueue: Callable[[Callable[[], None]], None]):
        self.client, self.run_id, self.enqueue = client, run_id, enqueue
        self._folder: Path | None = None

    @property
    def folder(self) -> Path:
        """The local staging folder (made on first use)."""
        if self._folder is None:
            sweep_stale_staging()
            self._folder = Path(
                tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}{os.getpid()}-{self.run_id}-")
            )
        return self._folder

    @property
    def local_dir(self) -> Path:
        return self.folder / ARTIFACT_DIR

    def saved(self, path: Path) -> None:
        """Queue the upload of a checkpoint just written to `path`, and of the previous one."""
        for name in (PREVIOUS_NAME, path.name):  # the fallback first: last.pt may be cut off
            source = path.with_name(name)
            if not source.is_file():
                continue
            # A hard link freezes this version: the next checkpoint replaces `source`, not it.
            frozen = self.folder / f"upload-{time.monotonic_ns()}" / name
            frozen.parent.mkdir()
            os.link(source, frozen)
            self.enqueue(lambda frozen=frozen: self._upload(frozen))

    def _upload(self, frozen: Path) -> None:
        self.client.log_artifact(self.run_id, str(frozen), ARTIFACT_DIR)
        shutil.rmtree(frozen.parent, ignore_errors=True)

    def latest(self) -> Path | None:
        """The last checkpoint, downloaded (with `previous.pt` beside it when the store has
        one); None only when the store lists no checkpoint for the run."""
        names = {
            Path(f.path).name
            for f in self._retried(lambda: self.client.list_artifacts(self.run_id, ARTIFACT_DIR))
        }
        if CHECKPOINT_NAME not in names:
            return None
        self.local_dir.mkdir(parents=True, exist_ok=True)
        for name in [n for n in (PREVIOUS_NAME, CHECKPOINT_NAME) if n in names]:
            self._retried(
                lambda name=name: self.client.download_artifacts(
                    self.run_id, f"{ARTIFACT_DIR}/{name}", str(self.local_dir)
                )
            )
        return self.local_dir / CHECKPOINT_NAME

    def _retried(self, action: Callable[[], Any]) -> Any:
        try:
            return retrying(action)
        except Exception as error:
            raise CheckpointDownloadError(
                f"run {self.run_id}: cannot download the checkpoint from the artifact store "
                f"({type(error).__name__}: {first_line(error)}); not starting over from step 0"
            ) from error

    def remove(self) -> None:
        """Delete the staging folder (the run has ended; everything queued was written)."""
        if self._folder is not None:
            shutil.rmtree(self._folder, ignore_errors=True)
            self._folder = None
