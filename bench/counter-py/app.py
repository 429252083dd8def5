"""The kv counter of examples/counter in Python, for bench/polyglot.sh: one kv increment
per request, nothing else, so the languages are compared on the same work."""

import tabula
from tabula import kv


@tabula.handler
def handle(req: tabula.Request) -> str:
    return f"{kv.increment('visits')}\n"


IncomingHandler = handle
