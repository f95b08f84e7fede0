"""Requests a recipe makes that this machine may not honour: flash attention, Hub kernels, Liger kernels, a tracker,
padding-free batches, TF32 matmuls, torchao's 8-bit optimizer.

Published recipes ask for `attn_implementation: flash_attention_2` and Liger kernels as a matter of course. On a
machine without a GPU none of them can run, installed or not, so the run falls back (sdpa, no Liger, padded
batches) with one note each. With a GPU the user meant it: a missing package stops the run before anything loads,
with one line saying what to install or change. A tracker that is not installed stops the run on any machine.

`decide` is a pure function of the recipe's values and a `Machine`, so both branches are testable anywhere;
sft/recipe/finalize.py applies the fallbacks (the one place a recipe is changed).
"""

import importlib.util
from dataclasses import dataclass

from sft.errors import UserError

# Python modules whose presence we check -> what to install.
PIP_NAMES = {
    "flash_attn": "flash-attn --no-build-isolation",
    "flash_attn_interface": "FlashAttention-3 (flash-attention's hopper/ build)",
    "kernels": "kernels",
    # The README's install form, from the checkout: `pip install 'sft[...]'` would fetch another PyPI package.
    "liger_kernel": "-e \".[liger]\" (liger-kernel)",
    "tensorboard": "-e \".[tensorboard]\"",
    "wandb": "-e \".[wandb]\"",
    "trackio": "-e \".[trackio]\"",
    "torchao": "torchao",
}
# report_to name -> modules, any of which makes it available (transformers accepts tensorboardX too).
TRACKER_MODULES = {
    "tensorboard": ("tensorboard", "tensorboardX"), "wandb": ("wandb",), "trackio": ("trackio",),
    "mlflow": ("mlflow",), "comet_ml": ("comet_ml",), "neptune": ("neptune",), "clearml": ("clearml",),
    "dvclive": ("dvclive",), "swanlab": ("swanlab",), "codecarbon": ("codecarbon",), "dagshub": ("dagshub",),
    "azure_ml": ("azureml",), "flyte": ("flytekit",), "kubeflow": ("kubeflow",),
}
# attn_implementation -> modules, any of which runs it on a GPU (transformers falls back to a Hub kernel when the
# `kernels` package is there).
ATTENTION_MODULES = {
    "flash_attention_2": ("flash_attn", "kernels"),
    "flash_attention_3": ("flash_attn_interface", "kernels"),
}
# optim -> the module transformers imports for it (bitsandbytes' optimizers ship with sft's qlora dependency).
OPTIMIZER_MODULES = {"adamw_torch_4bit": "torchao", "adamw_torch_8bit": "torchao"}
CHECKED_MODULES = sorted({m for ms in (*TRACKER_MODULES.values(), *ATTENTION_MODULES.values()) for m in ms}
                         | {"liger_kernel", *OPTIMIZER_MODULES.values()})


@dataclass(frozen=True)
class Machine:
    on_gpu: bool
    installed: frozenset  # importable module names among CHECKED_MODULES
    tf32: bool = False  # an Ampere or newer NVIDIA GPU: TrainingArguments refuses tf32: true elsewhere


@dataclass(frozen=True)
class Fallback:
    key: str
    value: object
    note: str


def this_machine() -> Machine:
    from sft.train.hardware import has_gpu

    on_gpu = has_gpu()
    return Machine(on_gpu=on_gpu, installed=installed_modules(), tf32=on_gpu and ampere_or_newer())


def installed_modules() -> frozenset:
    return frozenset(m for m in CHECKED_MODULES if importlib.util.find_spec(m) is not None)


def ampere_or_newer() -> bool:
    import torch

    return torch.version.cuda is not None and torch.cuda.get_device_capability()[0] >= 8


def unusable_request(values: dict, installed) -> str | None:
    """What transformers cannot run whatever the machine: an attention it does not have, an optimizer whose package
    is missing. Also what `sft migrate` reports for such a value."""
    if values.get("attn_implementation") == "xformers":
        return ("attn_implementation xformers is not an attention transformers has; set attn_implementation: sdpa "
                "(PyTorch's memory-efficient attention, what xformers provided)")
    optim = str(getattr(values.get("optim"), "value", values.get("optim")))
    module = OPTIMIZER_MODULES.get(optim)
    if module and module not in installed:
        return (f"optim {optim} needs {module}, which is not installed: {_install(module)}, or set optim: "
                "adamw_bnb_8bit (bitsandbytes' 8-bit AdamW)")
    return None


def _install(module: str) -> str:
    return f"pip install {PIP_NAMES.get(module, module)}"


def decide(values: dict, machine: Machine) -> list[Fallback]:
    """The fallbacks this machine needs for the recipe's values; UserError for what it must not run without."""
    fallbacks = []
    problem = unusable_request(values, machine.installed)
    if problem:
        raise UserError(problem)
    if values.get("tf32") and not machine.tf32:
        fallbacks.append(Fallback("tf32", False, "tf32 needs an Ampere or newer NVIDIA GPU: turned off on this "
                                  "machine (float32 matmuls at full precision)"))
    attention = values.get("attn_implementation") or ""
    hub_kernel = attention.startswith("kernels-community/")
    if attention in ATTENTION_MODULES or attention.startswith("flash_attention") or hub_kernel:
        if not machine.on_gpu:
            fallbacks.append(Fallback("attn_implementation", "sdpa", f"attn_implementation {attention} needs a "
                                      "GPU: using sdpa on this CPU machine"))
        elif hub_kernel and "kernels" not in machine.installed:
            raise UserError(f"attn_implementation {attention} loads a Hub kernel and needs the kernels package: "
                            f"{_install('kernels')}, or set attn_implementation: sdpa")
        elif attention in ATTENTION_MODULES and not machine.installed & set(ATTENTION_MODULES[attention]):
            module = ATTENTION_MODULES[attention][0]
            raise UserError(f"attn_implementation {attention} needs {module}, which is not installed: "
                            f"{_install(module)} (or pip install kernels), or set attn_implementation: sdpa")
    if values.get("use_liger_kernel"):
        if not machine.on_gpu:
            fallbacks.append(Fallback("use_liger_kernel", False, "use_liger_kernel: Liger's Triton kernels need a "
                                      "GPU: turned off on this CPU machine"))
        elif "liger_kernel" not in machine.installed:
            raise UserError(f"use_liger_kernel: true needs liger-kernel, which is not installed: "
                            f"{_install('liger_kernel')}, or set use_liger_kernel: false")
    if values.get("padding_free") and not values.get("packing"):
        if not machine.on_gpu:
            fallbacks.append(Fallback("padding_free", False, "padding_free without packing: turned off on this CPU "
                                      "machine (padded batches; TRL enforces max_length on padding-free batches "
                                      "only when packing)"))
        else:
            raise UserError("padding_free: true without packing: TRL cannot enforce max_length on unpacked "
                            "padding-free batches; set packing: true (packing_strategy: bfd) or padding_free: false")
    for tracker in trackers(values.get("report_to")):
        if tracker not in TRACKER_MODULES:
            raise UserError(f"report_to {tracker}: not a tracker transformers knows; use one of "
                            f"{', '.join(TRACKER_MODULES)}, all or none")
        modules = TRACKER_MODULES[tracker]
        if not machine.installed & set(modules):
            raise UserError(f"report_to {tracker}: {modules[0]} is not installed: {_install(modules[0])}, or remove "
                            f"{tracker} from report_to")
    return fallbacks


def trackers(report_to) -> list[str]:
    """The trackers named (not `all`, which means those installed, nor `none`)."""
    names = [report_to] if isinstance(report_to, str) else list(report_to or [])
    return [n for n in names if n not in ("all", "none")]
