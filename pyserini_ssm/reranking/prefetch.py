"""Reading ahead: a background thread produces the next group's texts while the group before is scored."""

from __future__ import annotations

import queue
import sys
import threading
from typing import Any, Iterable, Iterator


def prefetched(items: Iterable[Any], ahead: int = 1) -> Iterator[Any]:
    """`items` in order, produced by a background thread that runs up to `ahead` items ahead of the consumer.

    `run_rerank` reads each group's texts (from the Lucene index: one JNI call per document; or from the candidates
    file) through it, so the reading overlaps the scoring of the group before instead of leaving the GPU idle. An
    exception raised while producing reaches the consumer at that item. When the consumer stops early, the producer
    stops after its current item and the source is closed in the producer's thread. The thread detaches itself
    from the JVM when it ends (pyjnius attaches any thread that calls Java; a thread that ends attached leaks).
    """
    buffer: queue.Queue = queue.Queue(maxsize=max(1, ahead))
    stop = threading.Event()
    end = object()

    def hand_over(entry: tuple[bool, Any]) -> bool:
        while not stop.is_set():
            try:
                buffer.put(entry, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        source = iter(items)
        try:
            for item in source:
                if not hand_over((True, item)):
                    return
            hand_over((True, end))
        except BaseException as error:  # noqa: BLE001 (handed to the consumer, which raises it)
            hand_over((False, error))
        finally:
            close = getattr(source, "close", None)
            if close is not None:
                close()
            jnius = sys.modules.get("jnius")
            if jnius is not None:
                jnius.detach()

    producer = threading.Thread(target=produce, name="prefetch-texts", daemon=True)
    producer.start()
    try:
        while True:
            produced, item = buffer.get()
            if not produced:
                raise item
            if item is end:
                return
            yield item
    finally:
        stop.set()
        producer.join()
