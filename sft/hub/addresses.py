"""Hub addresses and the Hub client's basics: `hf://OWNER/REPO/path/recipe.yaml[@revision]` (also
`hf://datasets/OWNER/REPO/...`) is a recipe address anywhere a recipe path is: the file and the data files it
names relatively are downloaded from the same repo and revision into the Hub cache, and relative paths resolve
inside that snapshot. With HF_HUB_OFFLINE=1 a cached recipe works from the cache.

Depends on nothing of sft but its errors, so reading a recipe (sft/recipe/reading.py) can use it while the rest of
sft.hub (publishing, model cards) depends on the recipe.
"""


import contextlib
import logging
import os
import posixpath
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from sft.errors import UserError

PREFIX = "hf://"
REPO_TYPES = {"models": "model", "datasets": "dataset", "spaces": "space"}
# Keys whose values name data files or folders (top level, and inside dataset_mixture / datasets entries).
DATA_KEYS = {"dataset_name", "chat_template", "chat_template_path", "data_files", "data_dir", "id", "path"}


@dataclass
class HubAddress:
    repo_id: str
    path: str
    revision: str | None
    repo_type: str = "model"

    def __str__(self):
        kind = "" if self.repo_type == "model" else f"{self.repo_type}s/"
        return f"{PREFIX}{kind}{self.repo_id}/{self.path}" + (f"@{self.revision}" if self.revision else "")


def parse_address(address: str) -> HubAddress:
    rest = address[len(PREFIX):]
    head, _, last = rest.rpartition("/")
    revision = None
    if "@" in last:  # only the file name part carries @revision
        last, revision = last.split("@", 1)
    parts = [p for p in f"{head}/{last}".split("/") if p]
    repo_type = "model"
    if parts and parts[0] in REPO_TYPES:
        repo_type = REPO_TYPES[parts.pop(0)]
    if len(parts) < 3 or revision == "":
        raise UserError(f"{address}: a Hub recipe address is hf://OWNER/REPO/path/recipe.yaml, optionally with "
                        "@revision (a branch, tag or commit)")
    return HubAddress("/".join(parts[:2]), "/".join(parts[2:]), revision, repo_type)


def offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").upper() in ("1", "ON", "YES", "TRUE")


def hub_error(err: Exception, what: str, repo_id: str, revision: str | None, path: str | None = None,
              upload: bool = False) -> UserError:
    """One line for any failure of the Hub client (never the token, never a traceback)."""
    import httpx2  # huggingface_hub's HTTP client: its network errors are neither ConnectionError nor OSError
    from huggingface_hub.errors import (GatedRepoError, HfHubHTTPError, LocalEntryNotFoundError,
                                        OfflineModeIsEnabled, RemoteEntryNotFoundError, RepositoryNotFoundError,
                                        RevisionNotFoundError)

    at = revision or "main"
    if isinstance(err, GatedRepoError):
        return UserError(f"{what}: {repo_id} is gated; accept its terms on the Hub and set HF_TOKEN")
    if isinstance(err, RepositoryNotFoundError):
        return UserError(f"{what}: no Hub repo {repo_id} (or it is private: set HF_TOKEN or run `hf auth login`)")
    if isinstance(err, RevisionNotFoundError):
        return UserError(f"{what}: revision {at} does not exist in {repo_id}; give a branch, tag or commit of it")
    if isinstance(err, RemoteEntryNotFoundError):
        return UserError(f"{what}: {repo_id} has no file {path} at revision {at}")
    if upload and isinstance(err, (OfflineModeIsEnabled, ConnectionError, httpx2.TransportError)):
        from huggingface_hub import constants

        why = "HF_HUB_OFFLINE=1 is set; unset it" if offline() else \
            f"cannot reach the Hub at {constants.ENDPOINT} ({err}); check the network or HF_ENDPOINT"
        return UserError(f"{what}: {why} and rerun (nothing was uploaded)")
    if isinstance(err, (LocalEntryNotFoundError, OfflineModeIsEnabled, ConnectionError, httpx2.TransportError)):
        why = "HF_HUB_OFFLINE=1" if offline() else "the Hub cannot be reached"
        return UserError(f"{what}: not in the local cache and {why}; run it once with network access to cache it")
    if isinstance(err, HfHubHTTPError):
        status = err.response.status_code if err.response is not None else "?"
        return UserError(f"{what}: the Hub answered {status}: {str(err).splitlines()[0]}")
    return UserError(f"{what}: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}")


def hub_errors():
    from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError, OfflineModeIsEnabled

    import httpx2

    return (HfHubHTTPError, EntryNotFoundError, OfflineModeIsEnabled, ConnectionError, OSError, httpx2.TransportError)


@contextlib.contextmanager
def quiet_client():
    """The client logs a warning per retry when the Hub cannot be reached; the user gets our one line instead."""
    logger = logging.getLogger("huggingface_hub")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


# ---------------------------------------------------------------------------------------------------------------
# Reading recipes from the Hub


def named_paths(value, key: str = "", absolute: bool = False) -> list[tuple[str, str]]:
    """(key, string) for every string under a data key of a recipe that could be a path; relative ones only
    unless `absolute`."""
    found = []
    if isinstance(value, dict):
        for k, v in value.items():
            found += named_paths(v, str(k), absolute)
    elif isinstance(value, list):
        for v in value:
            found += named_paths(v, key, absolute)
    elif isinstance(value, str) and key in DATA_KEYS:
        text = value.strip()
        starts_absolute = text.startswith(("/", "~"))
        if text and len(text) < 512 and not re.search(r"\s", text) and "://" not in text \
                and not text.startswith("{") and (absolute or not starts_absolute):
            found.append((key, text))
    return found


def download_recipe(address: str) -> tuple[Path, Path]:
    """The recipe file and the files it names relatively, from one repo at one revision, via the Hub cache.
    Returns (the local recipe file, the folder its relative paths resolve in)."""
    import yaml
    from huggingface_hub import hf_hub_download, snapshot_download

    where = parse_address(address)
    try:
        with quiet_client():
            local = Path(hf_hub_download(where.repo_id, where.path, revision=where.revision,
                                         repo_type=where.repo_type))
    except hub_errors() as err:
        raise hub_error(err, address, where.repo_id, where.revision, where.path) from err
    snapshot = local.parents[len(PurePosixPath(where.path).parts) - 1]  # .../snapshots/<commit>
    folder = PurePosixPath(where.path).parent
    try:
        data = yaml.safe_load(local.read_text())
    except yaml.YAMLError:
        data = None  # the recipe loader reports it with the line number
    patterns = []
    for _, name in named_paths(data if isinstance(data, dict) else {}):
        inside = posixpath.normpath(posixpath.join(str(folder), name))
        if not inside.startswith(".."):  # only files of this repo
            patterns += [inside, inside + "/*"]
    if patterns:
        try:
            with quiet_client():
                snapshot_download(where.repo_id, revision=snapshot.name, repo_type=where.repo_type,
                                  allow_patterns=patterns)
        except hub_errors() as err:
            raise hub_error(err, address, where.repo_id, where.revision) from err
    return local, snapshot / folder


def known_token(explicit: str | None = None) -> str | None:
    if explicit:
        return explicit
    try:
        from huggingface_hub import get_token

        return get_token()
    except Exception:  # no login cache: nothing to look for
        return os.environ.get("HF_TOKEN")
