"""Stage 1, stream: pairs enter the system and move between stages on Kafka.

In: JSONL files of pairs (``ingest``), records on the topics. Out: ``ResponsePair`` records
on the pairs topic, the selected / skipped split of the selection gate (``gate``), dead
letters. Here: the broker and its clients (``broker``; ``kafka_io`` builds kafka-python
clients, which the rest sees only through the ``clients`` protocols), bytes <-> records
(``serde``), and ``StreamProcessor``, the consuming side every later stage reuses.
Built from settings by ``setup`` (``stream_processor``, ``ingest_path``).
"""
