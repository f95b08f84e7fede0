"""Chat template names of axolotl and LLaMA-Factory that sft honours without a built-in of the same name: the
families whose models ship that template in their own tokenizer_config.json, which sft renders with by default."""

# Template name (axolotl's `chat_template`, LLaMA-Factory's `template`) -> the model family that ships it.
MODEL_FAMILIES = {
    "llama2": "Llama-2-chat", "llama4": "Llama-4", "gemma2": "Gemma-2", "gemma3": "Gemma-3", "gemma3n": "Gemma-3n",
    "phi": "Phi-3", "phi_3": "Phi-3", "phi_35": "Phi-3.5", "phi4": "Phi-4", "phi_small": "Phi-3-small",
    "qwen": "Qwen2", "qwen_25": "Qwen2.5", "qwen3": "Qwen3", "qwen3_nothink": "Qwen3", "deepseek3": "DeepSeek-V3",
    "deepseek_v3": "DeepSeek-V3", "cohere": "Command R", "command_a": "Command A", "glm4": "GLM-4",
    "mistral_v1": "Mistral", "mistral_v2v3": "Mistral", "mistral_v3_tekken": "Mistral-Nemo", "granite": "Granite",
}
# Templates that render the model's own format with its reasoning turned off.
THINKING_OFF = ("qwen3_nothink",)


def family_template(name: str) -> tuple[dict, str] | None:
    """(recipe values, why) for a template of a family whose models ship it, or None for another name."""
    family = MODEL_FAMILIES.get(name)
    if family is None:
        return None
    why = f"{name}: the chat template {family} models ship, which sft renders with by default"
    if name in THINKING_OFF:
        return {"chat_template_kwargs": {"enable_thinking": False}}, why + ", with thinking off"
    return {}, why
