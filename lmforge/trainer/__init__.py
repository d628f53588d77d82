"""The stages that run in pods or as local processes: `python -m lmforge.trainer <stage> --spec FILE`.

Nothing heavy is imported here: each stage module imports torch/transformers itself when it runs.
"""
