"""`ramo select`: the active-selection gate between the pairs topic and the labeler."""

from __future__ import annotations

import argparse
import signal
import threading
import time
from typing import Any

from ramo_stream.config import Settings


def cmd_select(args: argparse.Namespace, settings: Settings) -> int:
    from ramo_stream.registry.features import ServedModel
    from ramo_stream.stream.broker import kafka_session
    from ramo_stream.stream.gate import info_store, make_gate, run_gate

    s, topics = settings.select, settings.topics
    window = f"{s.window_pairs} pairs" if s.window_pairs else f"{s.window_s} s"
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    with kafka_session(settings) as bootstrap:
        processor, gate = make_gate(settings, bootstrap, ServedModel(settings))
        budget = (f"{s.budget_per_s:g} labels/s" if s.budget_per_s is not None
                  else f"{s.budget:g} per {window}")  # fmt: skip
        print(f"select: {topics.pairs} -> {topics.selected} (budget {budget}, {s.strategy}) +"
              f" {topics.skipped}; group {s.group}; M saved in"
              f" {info_store(settings).path}")  # fmt: skip
        started = time.monotonic()
        try:
            run_gate(processor, settings, stop, idle_timeout_s=args.idle_timeout,
                     until_caught_up=args.until_caught_up)  # fmt: skip
        finally:
            gate.save_info(time.monotonic(), force=True)
            processor.close()
            gate.writer.producer.close()
    st = gate.stats
    wall = time.monotonic() - started
    ps = processor.stats
    print(f"select: {st.seen} pairs in {st.windows} windows -> selected {st.selected}, skipped"
          f" {st.skipped}; dead-lettered {ps.dead_lettered}, duplicates {ps.duplicates};"
          f" model version {st.model_version or 'backbone'}")  # fmt: skip
    print(f"select: {st.pairs_per_s():.1f} pairs/s while busy ({st.busy_s:.1f} s busy of"
          f" {wall:.1f} s)")  # fmt: skip
    return 0


def add_commands(sub: Any, parent: argparse.ArgumentParser) -> None:
    p = sub.add_parser("select", parents=[parent], help="Active labeling: score each pair of"
                       " the pairs topic by the Fisher information of the served reward model"
                       " and send the best ones the budget allows to topics.selected (what the"
                       " labeler should read), every other one to topics.skipped with its"
                       " score. Settings: select.*.")  # fmt: skip
    p.add_argument("--idle-timeout", type=float, default=None, help="Stop after this many"
                   " seconds without a pair.")  # fmt: skip
    p.add_argument("--until-caught-up", action="store_true", help="Stop at the end of the"
                   " pairs topic.")  # fmt: skip
    p.set_defaults(fn=cmd_select)
