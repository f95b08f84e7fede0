"""Packaging that pyproject.toml cannot say alone: every package under sft/ (found, never listed by hand) plus the
launch profiles. accelerate_configs/ and deepspeed_configs/ stay at the top of the checkout, where users type
their paths; the wheel carries the same files inside the package (sft/accelerate_configs, sft/deepspeed_configs),
where sft/launch/profiles.py finds them once installed. One copy: these mappings, not a second set of files."""

from setuptools import find_packages, setup

PROFILE_FOLDERS = {"sft.accelerate_configs": "accelerate_configs", "sft.deepspeed_configs": "deepspeed_configs"}

setup(packages=find_packages(include=["sft", "sft.*"]) + list(PROFILE_FOLDERS), package_dir=PROFILE_FOLDERS)
