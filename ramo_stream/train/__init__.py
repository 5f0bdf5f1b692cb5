"""Stage 4, train: ``LabeledPair`` records in, reward-model versions out (Ray Train).

In: labels from the labels topic or a file (``sources``, ``data``). Out: versions published
to the registry. Here: a worker's state and steps (``worker``, unit-tested without Ray),
the loop that drives it on Ray Train (``loop``) and the driver that starts and stops it
(``driver.run_trainer``, the stage built from settings).
"""
