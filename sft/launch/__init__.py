"""Launching: profiles (accelerate and DeepSpeed configs), the memory plan, the launcher and Slurm scripts."""
