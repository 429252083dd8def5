// A JavaScript "hello" wasi:http component for bench/compare.sh, built with componentize-js
// for the plain `wasi:http/proxy` world (no tabula imports), so that `wasmtime serve` runs
// the same component: a large one (SpiderMonkey, ~12 MB).
import {
  Fields,
  OutgoingBody,
  OutgoingResponse,
  ResponseOutparam,
} from "wasi:http/types@0.2.12";

const HELLO = new TextEncoder().encode("Hello from JavaScript!\n");

export const incomingHandler = {
  handle(_request, out) {
    const response = new OutgoingResponse(Fields.fromList([["content-type", new TextEncoder().encode("text/plain")]]));
    const body = response.body();
    ResponseOutparam.set(out, { tag: "ok", val: response });
    const stream = body.write();
    stream.blockingWriteAndFlush(HELLO);
    stream[Symbol.dispose]();
    OutgoingBody.finish(body, undefined);
  },
};
