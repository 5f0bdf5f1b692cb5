"""Stage 3, registry: what the trainer publishes and the reward service loads.

In: a trained reward model (weights, tokenizer, metrics) from the trainer or ``ramo models
publish``. Out: numbered immutable versions and the CURRENT pointer (``store``, with
``durable`` writes), their manifests (``manifest``); the reward model's one input format,
load and save (``model``); the served model's features for the selection gate
(``features``). Opened from settings by ``setup.open_registry``.
"""
