"""The generator: the `Generator` protocol and its backends.

`generator` (the protocol, errors and the in-process transformers backend on transformers'
continuous batching), `static_batching` (our static-slot engine for GPUs), `remote` (any
OpenAI-compatible endpoint) and `model_store` (where the bundled model is dequantized once).
"""
