"""Training with PyTorch Lightning: data module, the DetectNet_v2 Lightning module, schedule, checkpoints."""
