"""tabula's Python SDK: handlers, kv, sessions and config over the ``tabula:host/app`` world.

::

    import tabula
    from tabula import kv

    @tabula.handler
    def handle(req: tabula.Request) -> tabula.Response:
        return tabula.Response.text(f"visit {kv.increment('visits')}\\n")

    IncomingHandler = handle  # componentize-py binds the export by this name

``tabula build`` (or ``tabula up``) makes a component of ``app.py`` with componentize-py,
against the world this SDK binds to. The module's top level runs once, at build time, and
every request starts from that snapshot in a fresh instance: call kv, session and config
only from the handler, where the host is.
"""

import json as _json
import sys
import traceback
from typing import Callable, Dict, List, Optional, Tuple, Union
from urllib.parse import parse_qs, parse_qsl

from componentize_py_types import Err, Ok
from wit_world import exports
from wit_world.imports import kv as _kv
from wit_world.imports import session as _session
from wit_world.imports import store as _config
from wit_world.imports import streams, types

__all__ = [
    "Request", "Response", "HttpError", "handler",
    "kv", "session", "config", "KvError", "SessionError", "ConfigError",
]


# ---- Requests -----------------------------------------------------------------------------

class Request:
    """An incoming request, its body already read in full."""

    def __init__(self, method: str, path_with_query: str,
                 headers: List[Tuple[str, bytes]], body: bytes = b""):
        path, _, query = path_with_query.partition("?")
        #: ``"GET"``, ``"POST"``, ...: always upper case.
        self.method = method
        #: The path without the query, as the client sent it (not decoded).
        self.path = path or "/"
        #: The raw query string, without the ``?``.
        self.query = query
        #: Every header as (lower-case name, bytes), in order: names may repeat.
        self.header_list = headers
        #: The body as bytes (empty if there is none).
        self.body = body

    def header(self, name: str) -> Optional[str]:
        """The first value of header ``name`` (any case), as text, or ``None``."""
        name = name.lower()
        for n, v in self.header_list:
            if n == name:
                return v.decode("latin-1")
        return None

    def query_param(self, name: str) -> Optional[str]:
        """The first value of query parameter ``name``, decoded, or ``None``."""
        values = parse_qs(self.query).get(name)
        return values[0] if values else None

    def query_params(self) -> List[Tuple[str, str]]:
        """Every query parameter, decoded, in order."""
        return parse_qsl(self.query, keep_blank_values=True)

    def text(self) -> str:
        """The body as UTF-8 text."""
        return self.body.decode("utf-8")

    def json(self):
        """The body parsed as JSON (a ``ValueError``, so a 500 unless caught, if it is not)."""
        return _json.loads(self.body)

    def form(self) -> Dict[str, str]:
        """An ``application/x-www-form-urlencoded`` body, decoded (first value of each)."""
        return {k: v[0] for k, v in parse_qs(self.text(), keep_blank_values=True).items()}


# ---- Responses ----------------------------------------------------------------------------

class Response:
    """What a handler answers: a status, headers and a body."""

    def __init__(self, body: Union[bytes, str] = b"", status: int = 200,
                 headers: Optional[Dict[str, str]] = None):
        self.status = status
        self.headers = dict(headers or {})
        self.body = body.encode("utf-8") if isinstance(body, str) else body

    @classmethod
    def text(cls, body: str, status: int = 200) -> "Response":
        """A ``text/plain`` response."""
        return cls(body, status, {"content-type": "text/plain; charset=utf-8"})

    @classmethod
    def html(cls, body: str, status: int = 200) -> "Response":
        """A ``text/html`` response."""
        return cls(body, status, {"content-type": "text/html; charset=utf-8"})

    @classmethod
    def json(cls, value, status: int = 200) -> "Response":
        """``value`` as JSON."""
        return cls(_json.dumps(value), status, {"content-type": "application/json"})

    @classmethod
    def redirect(cls, location: str, status: int = 303) -> "Response":
        """A redirect; ``303 See Other`` by default, the answer to a form post."""
        return cls(b"", status, {"location": location})


class HttpError(Exception):
    """Raise one to answer with ``status``; for a 4xx the message is the body."""

    def __init__(self, status: int, message: str = ""):
        super().__init__(message)
        self.status = status


# ---- The handler --------------------------------------------------------------------------

def handler(fn: Callable[[Request], Union[Response, str]]):
    """Turns ``fn(request)`` into the ``wasi:http/incoming-handler`` export: assign the result
    to ``IncomingHandler`` in ``app.py``.

    ``fn`` returns a ``Response`` or a string (a 200 ``text/plain`` answer). What it raises
    becomes the error's answer: an ``HttpError``'s status, 503 with ``Retry-After`` for an
    unavailable store, else 500. A 5xx says no more than its status, so internals do not
    leak; the traceback goes to stderr, which the host logs with the request.
    """

    class Handler(exports.IncomingHandler):
        def handle(self, request: types.IncomingRequest, response_out: types.ResponseOutparam):
            try:
                response = fn(_read_request(request))
                if isinstance(response, str):
                    response = Response.text(response)
                if not isinstance(response, Response):
                    raise TypeError(f"a handler returns a Response or a str, not {response!r}")
            except Exception as e:  # noqa: BLE001: every failure must still answer
                response = _error_response(e)
            _write_response(response_out, response)

    Handler.__name__ = Handler.__qualname__ = getattr(fn, "__name__", "Handler")
    return Handler


def _method(method) -> str:
    if isinstance(method, types.Method_Other):
        return method.value
    return type(method).__name__.split("_", 1)[1].upper()


def _read_request(incoming: types.IncomingRequest) -> Request:
    with incoming.headers() as fields:
        headers = fields.entries()
    request = Request(_method(incoming.method()), incoming.path_with_query() or "/", headers)
    # GET and HEAD have a body only when they say so (RFC 9110 gives it no meaning); not
    # opening an empty one spares the usual request three host calls.
    declares_body = (
        request.method not in ("GET", "HEAD")
        or request.header("transfer-encoding") is not None
        or (request.header("content-length") or "0").strip() != "0"
    )
    if declares_body:
        request.body = _read_body(incoming.consume())
    return request


def _read_body(body: types.IncomingBody) -> bytes:
    chunks = []
    with body.stream() as stream:
        while True:
            try:
                chunks.append(stream.blocking_read(65536))
            except Err as e:
                # The stream ends with `closed`; anything else is a real failure.
                if isinstance(e.value, streams.StreamError_Closed):
                    break
                raise
    types.IncomingBody.finish(body)
    return b"".join(chunks)


def _error_response(e: Exception) -> Response:
    if isinstance(e, HttpError):
        status = e.status
    elif isinstance(e, (KvError, SessionError)) and e.kind == "unavailable":
        status = 503
    else:
        status = 500
    if status < 500:
        return Response.text(f"{e}\n", status)
    print(f"handler error ({status}):", file=sys.stderr)
    traceback.print_exception(e, file=sys.stderr)
    if status == 503:
        return Response("service unavailable; retry shortly\n", status, {"retry-after": "1"})
    return Response("internal server error\n", status)


#: The most `blocking-write-and-flush` takes in one call.
_ONE_CALL = 4096


def _write_response(out: types.ResponseOutparam, response: Response) -> None:
    entries = [(n.lower(), v.encode("latin-1")) for n, v in response.headers.items()]
    try:
        fields = types.Fields.from_list(entries)
    except Err as e:
        print(f"handler returned headers the host refuses: {e.value}", file=sys.stderr)
        fields = types.Fields()
    outgoing = types.OutgoingResponse(fields)
    # A new response is already 200: one host call fewer for most responses.
    if response.status != 200:
        outgoing.set_status_code(response.status)
    body = outgoing.body()
    types.ResponseOutparam.set(out, Ok(outgoing))
    if response.body:
        with body.write() as stream:
            for at in range(0, len(response.body), _ONE_CALL):
                stream.blocking_write_and_flush(response.body[at:at + _ONE_CALL])
    types.OutgoingBody.finish(body, None)


# ---- Host errors --------------------------------------------------------------------------

class _HostError(Exception):
    """A WIT error variant, raised: ``kind`` is the variant (e.g. ``"unavailable"``, the store
    is down and a retry later may work), ``limit`` the host's limit for the ``*-too-large``
    kinds."""

    def __init__(self, variant):
        kind = type(variant).__name__.split("_", 1)[1]
        kind = "".join("-" + c.lower() if c.isupper() else c for c in kind).lstrip("-")
        value = getattr(variant, "value", None)
        self.kind = kind
        self.limit = value if isinstance(value, int) else None
        if self.limit is not None:
            message = f"{kind.replace('-', ' ')} (limit {value} bytes)"
        else:
            message = value if kind == "other" else f"{kind}: {value}"
        super().__init__(message)


class KvError(_HostError):
    """kinds: ``key-too-large``, ``value-too-large`` (with ``limit``), ``unavailable``,
    ``other``."""


class SessionError(_HostError):
    """kinds: ``too-large`` (with ``limit``), ``unavailable``, ``other``."""


class ConfigError(_HostError):
    """kinds: ``upstream``, ``io``."""


def _calling(error_class):
    """Calls a host function, raising its WIT error variant as ``error_class``."""

    def call(f, *args):
        try:
            return f(*args)
        except Err as e:
            raise error_class(e.value) from None

    return call


_kv_call = _calling(KvError)
_session_call = _calling(SessionError)
_config_call = _calling(ConfigError)


def _bytes(value: Union[bytes, str]) -> bytes:
    """Strings are stored as UTF-8."""
    return value.encode("utf-8") if isinstance(value, str) else value


def _text(value: Optional[bytes]) -> Optional[str]:
    return None if value is None else value.decode("utf-8")


def _ms(seconds: Optional[float]) -> Optional[int]:
    return None if seconds is None else max(1, int(seconds * 1000))


# ---- kv -----------------------------------------------------------------------------------

class kv:
    """Key-value storage: the one place a handler can keep something for the next request.
    Each app has its own keyspace. Values are bytes (a ``str`` is stored as UTF-8)."""

    @staticmethod
    def get(key: str) -> Optional[bytes]:
        """The value at ``key``, or ``None``."""
        return _kv_call(_kv.get, key)

    @staticmethod
    def get_text(key: str) -> Optional[str]:
        """The value at ``key`` as text, or ``None``."""
        return _text(kv.get(key))

    @staticmethod
    def set(key: str, value: Union[bytes, str], ttl: Optional[float] = None) -> None:
        """Stores ``value``, replacing any earlier value and expiry; it expires after ``ttl``
        seconds if given."""
        _kv_call(_kv.set, key, _bytes(value), _ms(ttl))

    @staticmethod
    def delete(key: str) -> bool:
        """Removes ``key``; whether it was there."""
        return _kv_call(_kv.delete, key)

    @staticmethod
    def exists(key: str) -> bool:
        """Whether ``key`` holds a value."""
        return _kv_call(_kv.exists, key)

    @staticmethod
    def increment(key: str, delta: int = 1) -> int:
        """Adds ``delta`` to the integer at ``key`` (0 if missing), atomically, across every
        replica; the new value."""
        return _kv_call(_kv.increment, key, delta)

    @staticmethod
    def compare_and_swap(key: str, expected: Optional[Union[bytes, str]],
                         new: Union[bytes, str], ttl: Optional[float] = None) -> bool:
        """Sets ``key`` to ``new`` only if it holds ``expected`` (``None``: only if missing);
        whether it did."""
        expected = None if expected is None else _bytes(expected)
        return _kv_call(_kv.compare_and_swap, key, expected, _bytes(new), _ms(ttl))

    @staticmethod
    def list_keys(prefix: str = "", cursor: Optional[str] = None,
                  limit: int = 100) -> Tuple[List[str], Optional[str]]:
        """One page of the keys starting with ``prefix``, and the cursor of the next page
        (``None`` after the last)."""
        page = _kv_call(_kv.list_keys, prefix, cursor, limit)
        return page.keys, page.cursor

    @staticmethod
    def expire(key: str, ttl: Optional[float]) -> bool:
        """Makes ``key`` expire after ``ttl`` seconds (``None``: never); whether it exists."""
        return _kv_call(_kv.expire, key, _ms(ttl))

    @staticmethod
    def ttl(key: str) -> Optional[float]:
        """Seconds until ``key`` expires: ``None`` if it never does; raises ``KeyError`` if
        there is no such key."""
        expiry = _kv_call(_kv.ttl, key)
        if isinstance(expiry, _kv.Expiry_Missing):
            raise KeyError(key)
        if isinstance(expiry, _kv.Expiry_Persistent):
            return None
        return expiry.value / 1000


# ---- session ------------------------------------------------------------------------------

class session:
    """The visitor's session: values kept across their requests, in the store, behind a
    cookie the host manages (the handler never sees it). It exists once something is set."""

    @staticmethod
    def get(name: str) -> Optional[bytes]:
        """The value ``name``, or ``None``."""
        return _session_call(_session.get, name)

    @staticmethod
    def get_text(name: str) -> Optional[str]:
        """The value ``name`` as text, or ``None``."""
        return _text(session.get(name))

    @staticmethod
    def set(name: str, value: Union[bytes, str]) -> None:
        """Sets ``name`` (starting a session if there is none)."""
        _session_call(_session.set, name, _bytes(value))

    @staticmethod
    def remove(name: str) -> None:
        """Removes ``name``."""
        _session_call(_session.remove, name)

    @staticmethod
    def clear() -> None:
        """Removes every value, keeping the session."""
        _session_call(_session.clear)

    @staticmethod
    def destroy() -> None:
        """Ends the session (logging out): its data is deleted and the cookie cleared."""
        _session_call(_session.destroy)

    @staticmethod
    def regenerate() -> None:
        """Gives the session a new id, keeping its values (do it on log-in)."""
        _session_call(_session.regenerate)

    @staticmethod
    def id() -> Optional[str]:
        """The session's id, or ``None`` while there is no session."""
        return _session_call(_session.id)


# ---- config -------------------------------------------------------------------------------

class config:
    """The app's variables: ``[variables]`` in ``tabula.toml``, ``--var``/``--secret`` on the
    command line, or a deploy's. A secret reads like any other; the host keeps it out of its
    logs."""

    @staticmethod
    def get(name: str) -> Optional[str]:
        """The variable ``name``, or ``None``."""
        return _config_call(_config.get, name)

    @staticmethod
    def all() -> Dict[str, str]:
        """Every variable."""
        return dict(_config_call(_config.get_all))
