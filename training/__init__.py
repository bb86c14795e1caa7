"""The retraining job: datasets from feedback exports and the knowledge base, TRL/PEFT training,
the model registry, the evaluation gate and promotion (docs/training.md).

Importing this package is cheap: torch, transformers, trl, peft and datasets load only inside
the functions that run a training job (`training.trainer`).
"""
