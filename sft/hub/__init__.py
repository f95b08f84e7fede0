"""Recipes and trained runs on the Hugging Face Hub: addresses (hf:// recipes, the client's errors and token),
publish (recipes and runs) and model_card. Import from the submodules."""
