"""Running an iterable (decoding, preprocessing) ahead in a background thread. Nothing here imports
the compiled extension."""
from __future__ import annotations

import numbers
import queue
import threading
from typing import Any, Callable, Iterable

__all__ = ["Prefetcher", "prefetch"]

_ITEM, _ERROR, _END = 0, 1, 2


def _put(q: queue.Queue, item, stop: threading.Event) -> bool:
    while not stop.is_set():
        try:
            q.put(item, timeout=0.05)
            return True
        except queue.Full:
            continue
    return False


def _prefetch_worker(iterable, fn, q: queue.Queue, stop: threading.Event) -> None:
    it = None
    try:
        it = iter(iterable)
        while not stop.is_set():
            try:
                item = next(it)
            except StopIteration:
                break
            if fn is not None:
                item = fn(item)
            if not _put(q, (_ITEM, item), stop):
                break
    except BaseException as e:  # noqa: BLE001 - handed to the consumer
        _put(q, (_ERROR, e), stop)
        return
    finally:
        close = getattr(it, "close", None)
        if close is not None:
            try:
                close()
            except Exception:  # noqa: BLE001 - best effort
                pass
    _put(q, (_END, None), stop)


class Prefetcher:
    """Iterator over ``iterable`` (mapped through ``fn``) produced ahead by a background thread.

    At most ``depth`` items wait in the queue.  An exception raised by the source or by ``fn`` is
    raised by the consumer's next ``next()`` (with its original traceback).  :meth:`close` (or
    leaving a ``with`` block, or dropping the iterator) stops the thread after the item it is
    working on; the source is closed from the worker thread if it has a ``close`` method.
    """

    def __init__(self, iterable: Iterable, depth: int = 8, fn: Callable[[Any], Any] | None = None):
        if isinstance(depth, bool) or not isinstance(depth, numbers.Integral) or depth < 1:
            raise ValueError(f"depth must be a positive integer, got {depth!r}")
        self._q: queue.Queue = queue.Queue(maxsize=int(depth))
        self._stop = threading.Event()
        self._done = False
        self._thread = threading.Thread(target=_prefetch_worker, args=(iterable, fn, self._q, self._stop),
                                        name="statekv-prefetch", daemon=True)
        self._thread.start()

    def __iter__(self) -> "Prefetcher":
        return self

    def __next__(self):
        if self._done:
            raise StopIteration
        kind, value = self._q.get()
        if kind == _ITEM:
            return value
        self._done = True
        self._thread.join()
        if kind == _ERROR:
            raise value
        raise StopIteration

    @property
    def thread(self) -> threading.Thread:
        """The worker thread (for tests and diagnostics)."""
        return self._thread

    def close(self, timeout: float | None = 30.0) -> None:
        """Stop the worker (after its current item) and wait for it up to ``timeout`` seconds."""
        self._done = True
        self._stop.set()
        try:
            while True:
                self._q.get_nowait()
        except queue.Empty:
            pass
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    def __enter__(self) -> "Prefetcher":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):
        try:
            self._done = True
            self._stop.set()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass


def prefetch(iterable: Iterable, depth: int = 8, fn: Callable[[Any], Any] | None = None) -> Prefetcher:
    """Run ``iterable`` (and ``fn`` on each item, e.g. preprocessing) ahead in a background thread.

    Returns a :class:`Prefetcher`: iterate it as you would ``map(fn, iterable)``; use it as a
    context manager or call ``close()`` to stop early."""
    return Prefetcher(iterable, depth=depth, fn=fn)
