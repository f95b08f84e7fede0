"""Publishing to the Hub through the `huggingface_hub` client.

- `publish_recipe`: upload a recipe, and with_data the local data files it names (paths rewritten to
  repo-relative ones), so `sft train hf://REPO/recipe.yaml` reproduces it elsewhere.
- `push_run`: upload a finished run (weights or adapter, tokenizer, chat template, the resolved recipe) with a
  model card (sft/hub/model_card.py).
Tokens are read from the recipe's hub_token, HF_TOKEN or the login cache; they are never written to a recipe,
a card or a message: files about to be uploaded are checked for the token's value.
"""

import re
from pathlib import Path, PurePosixPath

from sft.errors import UserError
from sft.hub.addresses import HubAddress, hub_error, hub_errors, known_token, named_paths
from sft.io import recipe_yaml
from sft.recipe.resolved import redact

# Files of a run directory that are never pushed: optimizer/RNG pickles, and the pickled TrainingArguments (which
# hold hub_token).
NEVER_PUSHED = re.compile(r"^(training_args\.bin|.*\.pt|.*\.pth|.*\.tmp|\.sft-stop.*|README\.md)$")


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
    except hub_errors() as err:
        raise hub_error(err, f"uploading to {repo_id}", repo_id, revision, upload=True) from err
    return repo_id, info.oid


# ---------------------------------------------------------------------------------------------------------------
# Publishing a recipe


def _local_path(value: str, recipe_dir: Path) -> Path | None:
    """Where a recipe value points on this machine, resolved as sft.recipe.coercion.resolve_path does; None if
    nowhere."""
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
    from sft.recipe.load import load_recipe

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
        text = header + recipe_yaml(clean)
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
    import yaml

    from sft.hub.model_card import build_card

    run_dir = Path(run_dir)
    files = run_files(run_dir)
    clean, removed = redact(yaml.safe_load(files["recipe.yaml"]) or {})
    if removed:  # a run written before secrets were filtered
        files["recipe.yaml"] = recipe_yaml(clean).encode()
    if "/" not in repo_id:
        try:
            repo_id = f"{_api(token).whoami()['name']}/{repo_id}"
        except hub_errors() as err:
            raise hub_error(err, f"pushing {run_dir}", repo_id, revision, upload=True) from err
    files["README.md"] = build_card(run_dir, repo_id).encode()
    repo_id, commit = _commit(repo_id, files, f"Upload {run_dir.name} trained with sft", token, private, revision)
    return f"pushed {run_dir} to {repo_id} at {commit[:12]} ({len(files)} files, model card included)"
