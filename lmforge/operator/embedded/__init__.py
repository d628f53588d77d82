"""The embedded runner behind `lmforge run`: the operator's reconcilers driven by a local loop, with
a state file for an API server and the local backend for Jobs. See docs/embedded.md."""
