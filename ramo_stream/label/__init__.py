"""Stage 2, label: pairs in, ``LabeledPair`` out (which response is safer, and by how much).

In: ``ResponsePair`` from the pairs (or selected) topic or a JSONL file. Out: ``LabeledPair``
on the labels topic or in a JSONL file. Here: the grader backends (``grading``), the Rule
Adapter that picks the rules worth grading (``rule_adapter``), the ``Labeler`` (``labeler``),
offline labeling of a file (``offline``), its Ray Serve app (``serve_app``) and the Kafka
bridge pairs -> labeler -> labels (``bridge``). Built from settings by
``setup.build_labeler``.
"""
