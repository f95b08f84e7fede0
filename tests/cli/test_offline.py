"""Offline, or with the Hub out of reach, a bad input still reads as one line and fails at once."""

import logging
import socket

import pytest

from tests.conftest import run_cli, write_recipe

BNB_KERNEL = "kernels-community/quantization-bitsandbytes"  # what bitsandbytes asks `kernels` for at import


def assert_one_line(proc, *fragments):
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("error: "), proc.stderr[-3000:]
    for fragment in fragments:
        assert fragment in proc.stderr, proc.stderr


def test_kernels_offline_trust_notice_is_silenced(caplog):
    """Whatever the CPU: the notice `kernels` logs before looking in the cache never reaches a handler."""
    kernels = pytest.importorskip("kernels", reason="`kernels` not installed (the test extra installs it)")
    from sft.console import quiet_library_noise

    quiet_library_noise()
    with caplog.at_level(logging.INFO), pytest.raises(Exception, match="offline"):
        kernels.get_kernel(BNB_KERNEL, version=1)  # not cached, HF_HUB_OFFLINE=1 (conftest)
    assert not [r for r in caplog.records if "trust check" in r.getMessage()], caplog.text


def test_bad_input_is_one_line_offline_with_kernels_installed(tmp_path):
    """`sft check` imports TRL, which imports bitsandbytes, which (on AVX512-BF16 CPUs) asks `kernels` for a CPU
    kernel: offline, `kernels` logged "Skipping publisher trust check ..." before sft's error."""
    pytest.importorskip("kernels", reason="`kernels` not installed (the test extra installs it)")
    from bitsandbytes.functional import has_avx512bf16

    if not has_avx512bf16():
        pytest.skip("no AVX512-BF16 on this CPU: bitsandbytes asks `kernels` for nothing at import")
    recipe = write_recipe(tmp_path / "recipe.yaml", model_name_or_path=str(tmp_path / "no-such-model"),
                          dataset_name=str(tmp_path / "train.jsonl"), output_dir=str(tmp_path / "run"))
    proc = run_cli("check", recipe, env={"HF_HUB_OFFLINE": "1"})
    assert_one_line(proc, "no-such-model", "does not exist")
    assert not (tmp_path / "run").exists()


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize("hub", ["offline", "unreachable"])
def test_plan_without_model_config_fails_at_once_when_the_hub_is_out_of_reach(hub, tmp_path):
    """Before: offline, transformers' own message; unreachable, five retries (~30 s) each logging two lines."""
    recipe = write_recipe(tmp_path / "recipe.yaml", model_name_or_path="Qwen/Qwen2.5-0.5B",
                          dataset_name=str(tmp_path / "train.jsonl"), output_dir=str(tmp_path / "run"))
    env = {"HF_HOME": str(tmp_path / "hf-home"), "HF_HUB_DISABLE_TELEMETRY": "1"}
    if hub == "offline":
        env["HF_HUB_OFFLINE"] = "1"
        expected = ("Qwen/Qwen2.5-0.5B", "not in the local cache and HF_HUB_OFFLINE=1", "--model-config")
    else:
        endpoint = f"http://127.0.0.1:{closed_port()}"
        env.update(HF_HUB_OFFLINE="0", HF_ENDPOINT=endpoint)
        expected = ("Qwen/Qwen2.5-0.5B", f"cannot reach the Hub at {endpoint}", "HF_ENDPOINT", "--model-config")
    proc = run_cli("plan", recipe, "--gpus", "1", "--gpu-memory", "80", env=env)
    assert_one_line(proc, *expected)
