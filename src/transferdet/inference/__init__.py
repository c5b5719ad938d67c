"""Running a trained detector: loading checkpoints for inference, batching, mapping boxes back to images."""
