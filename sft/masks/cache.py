"""The on-disk cache of tokenized datasets: a key made of the examples, the tokenizer, the template, the stop
tokens, the chat_template_kwargs and the settings, so that a second run with unchanged inputs reuses the result
and any change to one of them does not.

Beside it, a run-scoped scratch folder for the Arrow files data preparation writes when they are not cached
(normalised rows, and tokens with `data_cache: false`): on disk and memory-mapped, so a large dataset is never held
in memory, and removed when the process that made it exits."""

import atexit
import hashlib
import json
import os
import shutil
import socket
import tempfile
import uuid
from functools import lru_cache
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1]


def cache_root() -> Path:
    if os.environ.get("SFT_CACHE_DIR"):
        return Path(os.environ["SFT_CACHE_DIR"])
    from datasets import config

    return Path(config.HF_DATASETS_CACHE) / "sft-tokenized"


def tokenizer_fingerprint(tokenizer) -> str:
    digest = hashlib.sha256()
    digest.update(type(tokenizer).__name__.encode())
    digest.update(tokenizer.backend_tokenizer.to_str().encode())
    digest.update(json.dumps(tokenizer.special_tokens_map, sort_keys=True, default=str).encode())
    digest.update(str(getattr(tokenizer, "split_special_tokens", False)).encode())
    return digest.hexdigest()


@lru_cache(maxsize=None)
def labelling_code() -> str:
    """A digest of the code and templates that turn rows into tokens and labels (sft/masks, sft/templates, and the
    normalising of raw rows, which the tokenizing pass may do), so a change to them, released or not, never reuses
    labels the old code produced."""
    digest = hashlib.sha256()
    normalising = [PACKAGE / "data" / "formats.py", PACKAGE / "data" / "rows.py"]
    for path in sorted([*(PACKAGE / "masks").iterdir(), *(PACKAGE / "templates").iterdir(), *normalising]):
        if path.is_file() and path.suffix in (".py", ".jinja"):
            digest.update(f"{path.relative_to(PACKAGE)}\0".encode() + path.read_bytes())
    return digest.hexdigest()


def file_digest(path) -> str:
    """A file's contents, hashed once per run (blake2b streams at about 1 GB/s): a key that an edit keeps apart
    even when the modification time is preserved (`cp -p`, `rsync -t`, tar)."""
    digest = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def cache_key(dataset, tokenizer, plan, settings: dict) -> str:
    """Examples (with their tools and chat_template_kwargs) + tokenizer + plan + settings + the labelling code and
    library versions."""
    from importlib.metadata import version

    digest = hashlib.sha256()
    # sft itself is known by its labelling code, not its version: a source checkout run without `pip install`
    # (`accelerate launch sft/run.py`, the GPU check) has no installed version to read.
    header = {"code": labelling_code(), "tokenizers": version("tokenizers"),
              "transformers": version("transformers"), "template": plan.template, "stops": plan.stop_tokens,
              "closer": [plan.closer, plan.closer_written_last], "kwargs": plan.template_kwargs, **settings}
    digest.update(json.dumps(header, sort_keys=True, default=str).encode())
    digest.update(tokenizer_fingerprint(tokenizer).encode())
    digest.update(json.dumps(dataset.column_names).encode())
    for batch in dataset.iter(batch_size=10_000):
        digest.update(json.dumps(batch, sort_keys=True, default=str).encode())
    return digest.hexdigest()[:32]


@lru_cache(maxsize=None)
def scratch_root() -> Path:
    """Where runs keep their scratch folders; those of runs on this host that are gone (SIGKILLed, or out of
    memory) are removed the first time a process asks."""
    root = cache_root() / "scratch"
    root.mkdir(parents=True, exist_ok=True)
    for folder in root.glob(f"*-{socket.gethostname()}-*"):
        if not pid_alive(int(folder.name.split("-")[2])):
            shutil.rmtree(folder, ignore_errors=True)
    return root


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def owned_name(kind: str) -> str:
    """`KIND-HOST-PID-`: whose folder it is, so a later run on this host can tell a dead run's leftovers (the cache
    may be on a file system several nodes share)."""
    return f"{kind}-{socket.gethostname()}-{os.getpid()}-"


OWNED: list[Path] = []  # scratch folders this process made


def remove_at_exit(folder: Path) -> None:
    if not OWNED:
        owner = os.getpid()  # not from a forked worker (datasets' num_proc) that inherited the handler
        atexit.register(lambda: os.getpid() == owner and remove_owned_scratch())
    OWNED.append(folder)


def remove_owned_scratch() -> None:
    """Remove the scratch folders this process made (at exit; a killed run's are swept by the next one)."""
    while OWNED:
        shutil.rmtree(OWNED.pop(), ignore_errors=True)


@lru_cache(maxsize=None)
def scratch_dir() -> Path:
    folder = Path(tempfile.mkdtemp(dir=scratch_root(), prefix=owned_name("run")))
    remove_at_exit(folder)
    return folder


def scratch_name() -> str:
    return uuid.uuid4().hex


def scratch_file(kind: str) -> str:
    return str(scratch_dir() / f"{kind}-{scratch_name()}.arrow")
