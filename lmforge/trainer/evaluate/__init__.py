"""The `evaluate` stage (EvalSuite): perplexity, multiple-choice, generation, code and safety tasks
against a model artifact or an OpenAI-compatible endpoint, gated by thresholds."""
