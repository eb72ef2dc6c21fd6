"""Make parallel requests to a scripted LLM server meet there, so tests of concurrency limits see the overlap they
allow whatever the machine's load, instead of hoping that slow replies overlap."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from webdancer_dagster.testing.scripted_llm import ScriptedLLMServer


def hold_until_together(
    server: ScriptedLLMServer, together: int, timeout_s: float = 30.0, linger_s: float = 0.2
) -> Callable[[], int]:
    """Hold every chat request `server` answers until `together` are held at once (or `timeout_s` has passed), then
    `linger_s` more, for one more request to show up if the client would send it. Returns a function giving the most
    requests ever held at once: never more than the client had in flight, as each is released before its reply goes
    out (the server's own `max_in_flight` can count a finished request a moment too long).

    Clients under test need a timeout above `timeout_s`: a request they gave up on would stay counted here."""
    barrier = threading.Barrier(together, action=lambda: time.sleep(linger_s), timeout=timeout_s)
    lock = threading.Lock()
    held = {"now": 0, "most": 0}
    next_reply = server._next_reply

    def held_reply(request):
        reply = next_reply(request)  # the script's answer, under the server's lock: hold only after it
        with lock:
            held["now"] += 1
            held["most"] = max(held["most"], held["now"])
        try:
            barrier.wait()
        except threading.BrokenBarrierError:
            pass  # fewer came together than expected: `most` tells
        finally:
            with lock:
                held["now"] -= 1
        return reply

    server._next_reply = held_reply
    return lambda: held["most"]
