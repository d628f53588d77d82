"""ModelRelease `compress` stage: distil → prune → quantize a model, measure it, publish it."""
