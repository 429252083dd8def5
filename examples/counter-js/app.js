// A visit counter in JavaScript, the counterpart of examples/counter:
//
// - `GET` or `POST /counter-js` adds one to the count and answers, as JSON, a greeting, the
//   count, and how many of those visits were this visitor's.
// - `GET /counter-js/value` only reads the count.
//
// The count lives in the host's key-value store, so it survives every fresh instance and is
// shared by every replica on the same Redis; the visitor's own count lives in their session.
// The greeting is the app's `greeting` variable (`--var greeting=Howdy`), "Hello" without one.
// When the store is down the SDK answers 503.

import { config, handler, kv, session } from "tabula-sdk";

const KEY = "visits";

export const incomingHandler = handler((req) => {
  if (req.path.endsWith("/value")) {
    return `${kv.getText(KEY) ?? 0}\n`;
  }
  const visits = kv.increment(KEY);
  // Not atomic, unlike the count: one visitor's requests rarely race.
  const yours = Number(session.getText(KEY) ?? 0) + 1;
  session.set(KEY, String(yours));
  const greeting = config.get("greeting") ?? "Hello";
  return Response.json({ greeting, visits, yours });
});
