// The kv counter of examples/counter in JavaScript, for bench/polyglot.sh: one kv increment
// per request, nothing else, so the languages are compared on the same work.
import { handler, kv } from "tabula-sdk";

export const incomingHandler = handler(() => `${kv.increment("visits")}\n`);
