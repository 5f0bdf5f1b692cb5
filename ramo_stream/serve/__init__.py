"""Stage 5, serve: the reward service (``POST /v1/score``) on Ray Serve.

In: the registry's CURRENT version (hot-reloaded) and HTTP requests. Out: rewards. Here:
the HTTP bodies and errors (``reward_protocol``), the endpoint logic (``reward_service``),
the ingress (``reward_http``), the model replica (``reward_model_server``), dynamic
batching, admission control, metrics, and ``reward_app.build_app`` (the stage built from
settings).
"""
