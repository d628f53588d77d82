"""The Dataset stage: read → opt-out → clean → filter → redact → dedup → tokenizer → packed shards.

`stage.run` is the entry point; `shards.ShardReader` is what the pretraining loader imports.
"""
