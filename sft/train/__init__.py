"""Training: the callbacks, stopping on request, checkpoints, the output_dir lock and what the hardware allows."""
