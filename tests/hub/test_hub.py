"""Recipes and runs on the Hub, through the real `huggingface_hub` client against a Hub-compatible server on
loopback (tests/support/hub_server.py): publish a recipe with its data, train from its hf:// address (cached, offline,
at a revision), push the run with a model card, and never write the token anywhere."""

import json
import os
import re
import shutil
import socket

import pytest
import yaml

from tests.conftest import HUB_TOKEN, run_cli, write_recipe

WORDS = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu".split()




def chat_rows(words):
    return "".join(json.dumps({"messages": [{"role": "user", "content": f"say {w}"},
                                            {"role": "assistant", "content": w.upper()}]}) + "\n" for w in words)


@pytest.fixture(scope="module")
def published(hub, tmp_path_factory, tiny_model):
    """A recipe whose data lives outside its folder (so publishing rewrites the path) and whose template lives
    beside it, with a token in it; published with its data."""
    root = tmp_path_factory.mktemp("publish")
    (root / "elsewhere").mkdir()
    (root / "elsewhere" / "train.jsonl").write_text(chat_rows(WORDS))
    src = root / "src"
    (src / "templates").mkdir(parents=True)
    from sft.tiny import CHATML_TEMPLATE

    (src / "templates" / "chatml.jinja").write_text(CHATML_TEMPLATE)
    recipe = write_recipe(
        src / "recipe.yaml", model_name_or_path=str(tiny_model), dataset_name=str(root / "elsewhere" / "train.jsonl"),
        chat_template_path="templates/chatml.jinja", output_dir="run", max_steps=2, per_device_train_batch_size=4,
        learning_rate=1e-3, logging_steps=1, save_steps=2, max_length=64, seed=0, report_to="none",
        push_to_hub=True, hub_model_id="tester/tiny-chat", hub_token=HUB_TOKEN,
        env={"HF_HUB_DISABLE_PROGRESS_BARS": "1", "WANDB_API_KEY": "wandb-secret-42"},
    )
    refused = run_cli("publish-recipe", recipe, "tester/recipes", env=hub.env)
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1, refused.stderr
    assert f"dataset_name {root / 'elsewhere' / 'train.jsonl'} is a local path others cannot reach; pass " \
           "--with-data" in refused.stderr
    assert ("model", "tester/recipes") not in hub.state.repos  # nothing uploaded

    proc = run_cli("publish-recipe", recipe, "tester/recipes", "--with-data", env=hub.env, check=True)
    address = re.search(r"published (hf://\S+)", proc.stdout).group(1)
    return {"root": root, "recipe": recipe, "address": address, "publish": proc}


def test_publish_uploads_recipe_and_data_with_repo_relative_paths_and_no_secret(hub, published):
    files = hub.files("tester/recipes")
    assert set(files) == {".gitattributes", "recipe.yaml", "data/train.jsonl", "templates/chatml.jinja"}
    assert files["data/train.jsonl"] == (published["root"] / "elsewhere" / "train.jsonl").read_bytes()
    recipe = yaml.safe_load(files["recipe.yaml"])
    assert recipe["dataset_name"] == "data/train.jsonl" and recipe["chat_template_path"] == "templates/chatml.jinja"
    assert "hub_token" not in recipe and recipe["env"] == {"HF_HUB_DISABLE_PROGRESS_BARS": "1"}
    assert HUB_TOKEN.encode() not in files["recipe.yaml"] and b"wandb-secret-42" not in files["recipe.yaml"]
    commit = hub.state.repos[("model", "tester/recipes")].refs["main"]
    assert published["address"] == f"hf://tester/recipes/recipe.yaml@{commit}"
    assert f"Bearer {HUB_TOKEN}" in hub.state.authorizations  # the client authenticated with the token
    assert HUB_TOKEN not in published["publish"].stdout + published["publish"].stderr


@pytest.mark.slow
def test_train_from_hub_address_then_push_to_hub(hub, published, tmp_path):
    """From another folder, with the local data gone: the recipe and its data come from the Hub; the finished run
    is pushed with push_to_hub: true and a model card; the token is in no file and no log."""
    shutil.move(published["root"] / "elsewhere", tmp_path / "moved-away")
    try:
        proc = run_cli("train", "hf://tester/recipes/recipe.yaml", cwd=tmp_path, env=hub.env)
    finally:
        shutil.move(tmp_path / "moved-away", published["root"] / "elsewhere")
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = tmp_path / "run"
    resolved = yaml.safe_load((run / "recipe.yaml").read_text())
    assert resolved["provenance"]["source"] == "hf://tester/recipes/recipe.yaml"
    assert "/snapshots/" in resolved["dataset_name"] and resolved["dataset_name"].endswith("data/train.jsonl")
    assert "pushed " in proc.stderr and "tester/tiny-chat" in proc.stderr

    pushed = hub.files("tester/tiny-chat")
    assert pushed["model.safetensors"] == (run / "model.safetensors").read_bytes()
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "recipe.yaml",
                 "README.md"):
        assert name in pushed, name
    assert not any(n.startswith("checkpoint-") or n == "training_args.bin" or n.endswith(".pt") for n in pushed)
    card = pushed["README.md"].decode()
    assert "sft train hf://tester/tiny-chat/recipe.yaml" in card
    assert "data/train.jsonl" in card and "final_loss" in card
    import transformers

    assert f"transformers {transformers.__version__}" in card
    for blob in [*pushed.values(), *(p.read_bytes() for p in run.rglob("*") if p.is_file() and p.suffix in
                                     (".json", ".yaml", ".md", ".jsonl", ".txt", ".jinja"))]:
        assert HUB_TOKEN.encode() not in blob
    assert HUB_TOKEN not in proc.stdout + proc.stderr


def test_sft_push_uploads_a_run_dir_with_its_card(hub, published, tmp_path, tiny_model):
    """`sft push RUN_DIR REPO` on a run folder: what goes up, what stays, and a clear error for a folder that is
    not a finished run."""
    run = tmp_path / "run"
    shutil.copytree(tiny_model, run)
    (run / "checkpoint-2").mkdir()
    (run / "checkpoint-2" / "optimizer.pt").write_bytes(b"x")
    (run / "training_args.bin").write_bytes(b"pickled args")
    (run / "recipe.yaml").write_text(yaml.safe_dump({
        "model_name_or_path": "HuggingFaceTB/SmolLM2-135M", "dataset_name": "trl-lib/Capybara", "method": "full",
        "provenance": {"source": "recipe.yaml", "versions": {"sft": "0.1.0", "trl": "1.16.0"}}}))
    (run / "all_results.json").write_text(json.dumps({"eval_loss": 1.25, "train_loss": 1.5}))
    proc = run_cli("push", run, "pushed-run", env=hub.env, check=True)  # no namespace: the token's user
    assert "pushed" in proc.stdout and "tester/pushed-run" in proc.stdout
    pushed = hub.files("tester/pushed-run")
    assert pushed["model.safetensors"] == (run / "model.safetensors").read_bytes()
    assert "training_args.bin" not in pushed and not any(n.startswith("checkpoint-") for n in pushed)
    card = pushed["README.md"].decode()
    front = yaml.safe_load(card.split("---")[1])
    assert front["base_model"] == "HuggingFaceTB/SmolLM2-135M" and front["datasets"] == ["trl-lib/Capybara"]
    metrics = {m["name"]: m["value"] for m in front["model-index"][0]["results"][0]["metrics"]}
    assert metrics == {"eval_loss": 1.25} and "| train_loss | 1.5 |" in card
    # huggingface_hub's model-index names the data a result was measured on: the run's (first) Hub dataset
    assert front["model-index"][0]["results"][0]["dataset"] == {"name": "trl-lib/Capybara", "type": "trl-lib/Capybara"}
    assert "pip install trl==1.16.0" in card and "sft train hf://tester/pushed-run/recipe.yaml" in card

    (run / "model.safetensors").unlink()
    bad = run_cli("push", run, "tester/pushed-run", env=hub.env)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1
    assert "no saved model" in bad.stderr and "did the run finish?" in bad.stderr


LOCATE = """
import json, sys
from sft.recipe.reading import locate
found = locate(sys.argv[1])
data = (found.base_dir / sys.argv[2]).read_text()
print(json.dumps({"recipe": found.path.read_text(), "base_dir": str(found.base_dir), "rows": len(data.splitlines())}))
"""


def locate(address: str, data: str, env: dict) -> dict:
    """sft.recipe.reading.locate(), the entry of every command that takes a recipe, in a fresh process (the client
    reads HF_ENDPOINT and HF_HUB_OFFLINE at import)."""
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-c", LOCATE, address, data], env={**os.environ, **env},
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout)


def test_hub_recipe_at_a_revision_and_offline_from_the_cache(hub, published, tmp_path):
    """A second version on branch v2 names fewer rows; each revision's data resolves inside its own snapshot.
    Offline, the cached recipe still works; an uncached one fails in one line."""
    src = tmp_path / "v2"
    src.mkdir()
    (src / "train.jsonl").write_text(chat_rows(WORDS[:5]))
    recipe = yaml.safe_load(hub.files("tester/recipes")["recipe.yaml"])
    recipe["dataset_name"] = "train.jsonl"
    recipe.pop("chat_template_path")
    write_recipe(src / "recipe.yaml", **recipe)
    run_cli("publish-recipe", src / "recipe.yaml", "tester/recipes", "--with-data", "--revision", "v2",
            "--path-in-repo", "v2/recipe.yaml", env=hub.env, check=True)
    v2_commit = hub.state.repos[("model", "tester/recipes")].refs["v2"]

    v2 = locate("hf://tester/recipes/v2/recipe.yaml@v2", "train.jsonl", hub.env)
    assert v2["rows"] == 5 and v2["base_dir"].endswith(f"/snapshots/{v2_commit}/v2")
    assert yaml.safe_load(v2["recipe"])["dataset_name"] == "train.jsonl"
    main = locate("hf://tester/recipes/recipe.yaml", "data/train.jsonl", hub.env)
    assert main["rows"] == 12 and "/snapshots/" in main["base_dir"]

    offline = {**hub.env, "HF_HUB_OFFLINE": "1"}
    served = len(hub.state.requests)
    assert locate("hf://tester/recipes/v2/recipe.yaml@v2", "train.jsonl", offline) == v2
    assert len(hub.state.requests) == served  # from the cache alone

    uncached = run_cli("train", "hf://tester/never-fetched/recipe.yaml", env=offline)
    assert uncached.returncode == 2 and uncached.stderr.count("\n") == 1
    assert "not in the local cache and HF_HUB_OFFLINE=1" in uncached.stderr


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("address, message", [
    ("hf://tester/no-such-repo/recipe.yaml", "no Hub repo tester/no-such-repo"),
    ("hf://tester/recipes/missing.yaml", "tester/recipes has no file missing.yaml at revision main"),
    ("hf://tester/recipes/recipe.yaml@no-such-branch", "revision no-such-branch does not exist in tester/recipes"),
    ("hf://tester/recipes", "a Hub recipe address is hf://OWNER/REPO/path/recipe.yaml"),
    ("no-network", "not in the local cache and the Hub cannot be reached"),
])
def test_bad_hub_addresses_fail_with_one_line(hub, published, address, message, tmp_path):
    env = dict(hub.env)
    if address == "no-network":
        env.update(HF_ENDPOINT=f"http://127.0.0.1:{_closed_port()}", HF_HOME=str(tmp_path / "empty-cache"))
        address = "hf://tester/recipes/recipe.yaml"
    proc = run_cli("train", address, env=env)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.count("\n") == 1 and message in proc.stderr and "Traceback" not in proc.stderr
    assert HUB_TOKEN not in proc.stderr


def test_saved_recipe_holds_no_token(tmp_path, tiny_model):
    """hub_token and secret-looking env entries never reach output_dir/recipe.yaml."""
    from sft.recipe.load import load_recipe
    from sft.recipe.resolved import write_resolved

    (tmp_path / "train.jsonl").write_text(chat_rows(WORDS))
    recipe = write_recipe(tmp_path / "recipe.yaml", model_name_or_path=str(tiny_model), dataset_name="train.jsonl",
                          output_dir=str(tmp_path / "out"), hub_token=HUB_TOKEN,
                          env={"SFT_TEST_SERVICE_TOKEN": HUB_TOKEN, "SFT_TEST_PLAIN": "kept"})
    try:
        write_resolved(load_recipe(str(recipe)), tmp_path / "resolved.yaml")
    finally:
        for name in ("SFT_TEST_SERVICE_TOKEN", "SFT_TEST_PLAIN"):
            os.environ.pop(name, None)
    text = (tmp_path / "resolved.yaml").read_text()
    assert HUB_TOKEN not in text and "hub_token" not in text
    assert yaml.safe_load(text)["env"] == {"SFT_TEST_PLAIN": "kept"}


def test_push_and_publish_with_the_hub_unreachable_fail_with_one_line(tmp_path, tiny_model):
    """A closed loopback port stands for a machine without network: the real client raises its own ConnectError
    (neither ConnectionError nor OSError); each command says which Hub it could not reach, in one line."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        endpoint = f"http://127.0.0.1:{s.getsockname()[1]}"
    env = {"HF_ENDPOINT": endpoint, "HF_HUB_OFFLINE": "0", "HF_TOKEN": HUB_TOKEN, "HF_HOME": str(tmp_path / "hf")}
    run = tmp_path / "run"
    shutil.copytree(tiny_model, run)
    (run / "recipe.yaml").write_text(yaml.safe_dump({"model_name_or_path": str(tiny_model), "method": "full"}))
    recipe = write_recipe(tmp_path / "recipe.yaml", model_name_or_path="tester/base", dataset_name="trl-lib/Capybara")
    for args, what in [(["push", run, "tester/run"], "uploading to tester/run"),
                       (["push", run, "run"], f"pushing {run}"),  # no namespace: asks the Hub who the token is
                       (["publish-recipe", recipe, "tester/recipes"], "uploading to tester/recipes")]:
        proc = run_cli(*args, env=env)
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr.splitlines() == [
            f"error: {what}: cannot reach the Hub at {endpoint} ([Errno 111] Connection refused); check the network "
            "or HF_ENDPOINT and rerun (nothing was uploaded)"], proc.stderr
    offline = run_cli("publish-recipe", recipe, "tester/recipes", env={**env, "HF_HUB_OFFLINE": "1"})
    assert offline.returncode == 2 and offline.stderr.splitlines() == [
        "error: uploading to tester/recipes: HF_HUB_OFFLINE=1 is set; unset it and rerun (nothing was uploaded)"]
