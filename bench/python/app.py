# A Python "hello" wasi:http component for bench/compare.sh, built with componentize-py:
# a large component (an interpreter, ~18 MB) whose instantiation is dominated by memory setup.
from componentize_py_types import Ok
from wit_world import exports
from wit_world.imports.types import (
    Fields, IncomingRequest, OutgoingBody, OutgoingResponse, ResponseOutparam,
)


class IncomingHandler(exports.IncomingHandler):
    def handle(self, request: IncomingRequest, response_out: ResponseOutparam) -> None:
        response = OutgoingResponse(Fields.from_list([("content-type", b"text/plain")]))
        body = response.body()
        ResponseOutparam.set(response_out, Ok(response))
        with body.write() as stream:
            stream.blocking_write_and_flush(b"Hello from Python!\n")
        OutgoingBody.finish(body, None)
