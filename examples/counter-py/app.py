"""A visit counter in Python, the counterpart of examples/counter:

- ``GET`` or ``POST /counter-py`` adds one to the count and answers, as JSON, a greeting, the
  count, and how many of those visits were this visitor's.
- ``GET /counter-py/value`` only reads the count.

The count lives in the host's key-value store, so it survives every fresh instance and is
shared by every replica on the same Redis; the visitor's own count lives in their session.
The greeting is the app's ``greeting`` variable (``--var greeting=Howdy``), "Hello" without
one. When the store is down the SDK answers 503.
"""

import tabula
from tabula import config, kv, session

KEY = "visits"


@tabula.handler
def handle(req: tabula.Request) -> tabula.Response:
    if req.path.endswith("/value"):
        return f"{kv.get_text(KEY) or 0}\n"
    visits = kv.increment(KEY)
    # Not atomic, unlike the count: one visitor's requests rarely race.
    yours = int(session.get_text(KEY) or 0) + 1
    session.set(KEY, str(yours))
    greeting = config.get("greeting") or "Hello"
    return tabula.Response.json({"greeting": greeting, "visits": visits, "yours": yours})


# componentize-py binds the `wasi:http/incoming-handler` export by this name.
IncomingHandler = handle
