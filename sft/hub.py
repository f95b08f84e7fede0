"""Recipes and trained runs on the Hugging Face Hub, through the `huggingface_hub` client.

- `hf://OWNER/REPO/path/recipe.yaml[@revision]` (also `hf://datasets/OWNER/REPO/...`) is a recipe address
  anywhere a recipe path is: the file and the data files it names relatively are downloaded from the same repo
  and revision into the Hub cache, and relative paths resolve inside that snapshot. With HF_HUB_OFFLINE=1 a
  cached recipe works from the cache.
- `publish_recipe`: upload a recipe, and with_data the local data files it names (paths rewritten to
  repo-relative ones), so `sft train hf://REPO/recipe.yaml` reproduces it elsewhere.
- `push_run`: upload a finished run (weights or adapter, tokenizer, chat template, the resolved recipe) with a
  model card (sft/model_card.py).
Tokens are read from the recipe's hub_token, HF_TOKEN or the login cache; they are never written to a recipe,
a card or a message: files about to be uploaded are checked for the token's value.
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
SECRET_NAME = re.compile(r"TOKEN|SECRET|PASSWORD|API_KEY|ACCESS_KEY", re.IGNORECASE)
# Files of a run directory that are never pushed: optimizer/RNG pickles, and the pickled TrainingArguments (which
# hold hub_token).
NEVER_PUSHED = re.compile(r"^(training_args\.bin|.*\.pt|.*\.pth|.*\.tmp|\.sft-stop.*|README\.md)$")


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


def hub_error(err: Exception, what: str, repo_id: str, revision: str | None, path: str | None = None) -> UserError:
    """One line for any failure of the Hub client (never the token, never a traceback)."""
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
    if isinstance(err, (LocalEntryNotFoundError, OfflineModeIsEnabled)) or isinstance(err, ConnectionError):
        why = "HF_HUB_OFFLINE=1" if offline() else "the Hub cannot be reached"
        return UserError(f"{what}: not in the local cache and {why}; run it once with network access to cache it")
    if isinstance(err, HfHubHTTPError):
        status = err.response.status_code if err.response is not None else "?"
        return UserError(f"{what}: the Hub answered {status}: {str(err).splitlines()[0]}")
    return UserError(f"{what}: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}")


def _hub_errors():
    from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError, OfflineModeIsEnabled

    return (HfHubHTTPError, EntryNotFoundError, OfflineModeIsEnabled, ConnectionError, OSError)


@contextlib.contextmanager
def _quiet_client():
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


def download_recipe(address: str):
    """The recipe file and the files it names relatively, from one repo at one revision, via the Hub cache."""
    import yaml
    from huggingface_hub import hf_hub_download, snapshot_download

    from sft.recipe import RecipeFile

    where = parse_address(address)
    try:
        with _quiet_client():
            local = Path(hf_hub_download(where.repo_id, where.path, revision=where.revision,
                                         repo_type=where.repo_type))
    except _hub_errors() as err:
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
            with _quiet_client():
                snapshot_download(where.repo_id, revision=snapshot.name, repo_type=where.repo_type,
                                  allow_patterns=patterns)
        except _hub_errors() as err:
            raise hub_error(err, address, where.repo_id, where.revision) from err
    return RecipeFile(path=local, display=address, base_dir=snapshot / folder)


# ---------------------------------------------------------------------------------------------------------------
# Secrets


def redact(values: dict) -> tuple[dict, list[str]]:
    """A copy without tokens: hub_token keys, and env entries whose names look secret. Returns what was removed."""
    from sft.recipe import SECRET_KEYS

    removed = [k for k in values if k in SECRET_KEYS]
    clean = {k: v for k, v in values.items() if k not in SECRET_KEYS}
    if isinstance(clean.get("env"), dict):
        secret = [k for k in clean["env"] if SECRET_NAME.search(str(k))]
        removed += [f"env.{k}" for k in secret]
        clean["env"] = {k: v for k, v in clean["env"].items() if k not in secret} or None
        if clean["env"] is None:
            del clean["env"]
    return clean, removed


def known_token(explicit: str | None = None) -> str | None:
    if explicit:
        return explicit
    try:
        from huggingface_hub import get_token

        return get_token()
    except Exception:  # no login cache: nothing to look for
        return os.environ.get("HF_TOKEN")


def check_no_token(files: dict[str, bytes], token: str | None) -> None:
    if token and len(token) >= 8:
        leaked = [name for name, content in files.items() if token.encode() in content]
        if leaked:
            raise UserError(f"{', '.join(leaked)}: contains your Hub token; nothing was uploaded. Remove it and "
                            "retry")


def _api(token):
    from huggingface_hub import HfApi

    return HfApi(token=token or None)


def _commit(repo_id: str, files: dict[str, bytes], message: str, token, private: bool, revision: str | None,
            repo_type: str = "model") -> tuple[str, str]:
    """Create the repo if needed and upload `files` in one commit. Returns (repo_id, commit id)."""
    from huggingface_hub import CommitOperationAdd

    check_no_token(files, known_token(token))
    api = _api(token)
    try:
        if "/" not in repo_id:
            repo_id = f"{api.whoami()['name']}/{repo_id}"
        api.create_repo(repo_id, repo_type=repo_type, private=private, exist_ok=True)
        if revision:
            api.create_branch(repo_id, branch=revision, repo_type=repo_type, exist_ok=True)
        info = api.create_commit(repo_id, [CommitOperationAdd(path, content) for path, content in files.items()],
                                 commit_message=message, revision=revision, repo_type=repo_type)
    except _hub_errors() as err:
        raise hub_error(err, f"uploading to {repo_id}", repo_id, revision) from err
    return repo_id, info.oid


# ---------------------------------------------------------------------------------------------------------------
# Publishing a recipe


def _local_path(value: str, recipe_dir: Path) -> Path | None:
    """Where a recipe value points on this machine, resolved as sft.recipe.resolve_path does; None if nowhere."""
    for candidate in (Path(value).expanduser(), recipe_dir / value):
        if candidate.exists():
            return candidate.resolve()
    return None


def _replace_strings(value, old: str, new: str):
    if isinstance(value, dict):
        return {k: _replace_strings(v, old, new) for k, v in value.items()}
    if isinstance(value, list):
        return [_replace_strings(v, old, new) for v in value]
    return new if value == old else value


def publish_recipe(recipe: str, repo_id: str, with_data: bool = False, path_in_repo: str | None = None,
                   revision: str | None = None, private: bool = False, token: str | None = None,
                   repo_type: str = "model") -> tuple[str, list[str]]:
    """Upload a recipe (and its local data). Returns (the hf:// address at the new commit, notes)."""
    import yaml

    source = Path(recipe)
    if not source.is_file():
        raise UserError(f"{recipe}: recipe file not found")
    from sft.recipe import load_recipe

    load_recipe(recipe)  # publish only recipes that load: bad keys fail here, before any data is read or sent
    text = source.read_text()
    data = yaml.safe_load(text) or {}
    recipe_dir = source.resolve().parent
    path_in_repo = path_in_repo or source.name
    repo_dir = PurePosixPath(path_in_repo).parent

    def in_repo(relative: str) -> str:
        return relative if str(repo_dir) == "." else str(repo_dir / relative)

    files, notes, rewritten = {}, [], dict(data)
    for key, value in named_paths(data, absolute=True):
        local = _local_path(value, recipe_dir)
        if local is None or key == "chat_template" and not local.is_file():
            continue
        if not with_data:
            raise UserError(f"{recipe}: {key} {value} is a local path others cannot reach; pass --with-data to "
                            "upload it with the recipe, or name a Hub dataset")
        inside = local.is_relative_to(recipe_dir)
        relative = local.relative_to(recipe_dir).as_posix() if inside else f"data/{local.name}"
        same = local.is_file() and files.get(in_repo(relative)) == local.read_bytes()  # named twice
        if not inside and not same and any(n == in_repo(relative) or n.startswith(in_repo(relative) + "/")
                                           for n in files):
            relative = f"data/{len(files)}-{local.name}"  # two files outside the recipe's folder, one name
        for file in ([local] if local.is_file() else sorted(p for p in local.rglob("*") if p.is_file())):
            name = relative if file == local else f"{relative}/{file.relative_to(local).as_posix()}"
            files[in_repo(name)] = file.read_bytes()
        if value != relative:
            rewritten = _replace_strings(rewritten, value, relative)
            notes.append(f"{key}: {value} -> {relative} (uploaded)")
    model = data.get("model_name_or_path")
    if isinstance(model, str) and _local_path(model, recipe_dir) is not None:
        notes.append(f"model_name_or_path {model} is a local folder: whoever trains this recipe needs the same "
                     "path, or change it to a Hub model name")
    clean, removed = redact(rewritten)
    notes += [f"{name}: left out (a secret)" for name in removed]
    if clean != data:
        header = f"# Published by sft from {source.name}; data paths are relative to this file.\n"
        text = header + yaml.safe_dump(clean, sort_keys=False, default_flow_style=None, width=120)
    files[path_in_repo] = text.encode()
    repo_id, commit = _commit(repo_id, files, f"Publish recipe {path_in_repo} with sft", token, private, revision,
                              repo_type)
    return str(HubAddress(repo_id, path_in_repo, commit, repo_type)), notes


# ---------------------------------------------------------------------------------------------------------------
# Pushing a trained run


def run_files(run_dir: Path) -> dict[str, bytes]:
    """What a finished run pushes: the top-level files of output_dir (model or adapter, tokenizer, template,
    recipe, metrics), never checkpoints, optimizer/RNG pickles or the pickled TrainingArguments."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(f"{run_dir}: no such run directory")
    names = {p.name for p in run_dir.iterdir() if p.is_file()}
    has_model = "config.json" in names and any(n.endswith(".safetensors") for n in names)
    has_adapter = "adapter_config.json" in names
    if not (has_model or has_adapter):
        raise UserError(f"{run_dir}: no saved model (config.json with *.safetensors, or adapter_config.json); "
                        "did the run finish?")
    if "recipe.yaml" not in names:
        raise UserError(f"{run_dir}: no recipe.yaml; push the output_dir of an `sft train` run")
    return {n: (run_dir / n).read_bytes() for n in sorted(names) if not NEVER_PUSHED.match(n)}


def push_run(run_dir, repo_id: str, token: str | None = None, private: bool = False,
             revision: str | None = None) -> str:
    """Upload a finished run with its model card. Returns a one-line report."""
    from sft.model_card import build_card

    import yaml

    run_dir = Path(run_dir)
    files = run_files(run_dir)
    clean, removed = redact(yaml.safe_load(files["recipe.yaml"]) or {})
    if removed:  # a run written before secrets were filtered
        files["recipe.yaml"] = yaml.safe_dump(clean, sort_keys=False, default_flow_style=None, width=120).encode()
    if "/" not in repo_id:
        try:
            repo_id = f"{_api(token).whoami()['name']}/{repo_id}"
        except _hub_errors() as err:
            raise hub_error(err, f"pushing {run_dir}", repo_id, revision) from err
    files["README.md"] = build_card(run_dir, repo_id).encode()
    repo_id, commit = _commit(repo_id, files, f"Upload {run_dir.name} trained with sft", token, private, revision)
    return f"pushed {run_dir} to {repo_id} at {commit[:12]} ({len(files)} files, model card included)"


def take_push_request(recipe) -> dict | None:
    """`push_to_hub: true`: sft pushes the finished run itself, after the final save, with its model card. The
    Trainer's own pushes (every checkpoint, its own card) are turned off. Returns push_run's arguments."""
    training = recipe.training
    if not training.push_to_hub:
        return None
    if not known_token(training.hub_token):
        raise UserError(f"{recipe.source}: push_to_hub is true but no Hub token was found; set HF_TOKEN, run "
                        "`hf auth login`, or set push_to_hub: false and push later with `sft push`")
    training.push_to_hub = False
    return {"repo_id": training.hub_model_id or Path(training.output_dir).name, "token": training.hub_token,
            "private": bool(getattr(training, "hub_private_repo", False)),
            "revision": getattr(training, "hub_revision", None)}
