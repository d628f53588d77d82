"""The Dataset stage: read → opt-out → clean → filter → redact → dedup → tokenizer → packed shards.

`stage.run` is the entry point; the shards it writes follow `lmforge.trainer.shards`, which every reader uses.
"""
