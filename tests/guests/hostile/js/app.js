// Echoes the request's `x-big` header: its length in the body, its bytes in the answer's own
// `x-echo` header. A client sending a 60 KB header must cost a JavaScript app little, both
// ways (the SDK's byte-string conversions), and the bytes must come back as they were sent.

import { handler } from "tabula-sdk";

export const incomingHandler = handler((req) => {
  const value = req.headers.get("x-big") ?? "";
  return new Response(`${value.length}\n`, { headers: { "x-echo": value } });
});
