"""A directory put first on a vLLM server's PYTHONPATH so its `sitecustomize` runs in every process of
the server (API server, engine core and the workers it spawns). See `sitecustomize.py` for why."""
