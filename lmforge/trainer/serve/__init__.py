"""ModelRelease `serve` stage: vLLM's OpenAI-compatible server for the release's model."""
