"""The PretrainJob stage: next-token pretraining with DeepSpeed, checkpoints to the store, resume and
Hugging Face export. Entry point: `stage.run`."""
