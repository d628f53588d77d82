"""The AlignmentJob stage: SFT, reward model, PPO and DPO/IPO with optional LoRA/QLoRA (see `stage`)."""
