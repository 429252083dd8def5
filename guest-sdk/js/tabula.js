// tabula's JavaScript SDK: handlers, kv, sessions and config over the `tabula:host/app` world.
//
//   import { handler, kv } from "tabula-sdk";
//   export const incomingHandler = handler(async (req) => `${kv.increment("visits")}\n`);
//
// `build.mjs` bundles an app with this file and turns it into a component with
// componentize-js; the `wasi:` and `tabula:` imports below are the component's imports, which
// exist only inside it (this module does not load in Node).
//
// The module's top level runs once, at build time, and the component starts every request
// from that snapshot. Call kv, session and config only from the handler: the host is not
// there at build time.

import {
  Fields,
  IncomingBody,
  OutgoingBody,
  OutgoingResponse,
  ResponseOutparam,
} from "wasi:http/types@0.2.12";
import * as hostKv from "tabula:host/kv@0.1.0";
import * as hostSession from "tabula:host/session@0.1.0";
import * as hostConfig from "wasi:config/store@0.2.0-draft";

const utf8 = new TextEncoder();
const fromUtf8 = new TextDecoder();

// Header values are byte strings, as in fetch: one character per byte, both ways. (UTF-8
// would turn some values into characters `Headers` refuses.) A client picks the request's
// headers, so turning them into strings must cost little per byte: the engine interprets
// JavaScript, and a callback per byte took 230 ms for a 60 KB header. `byteString` leaves the
// work to the engine's own code, `String.fromCharCode` over slices of the bytes (a slice at
// a time: a call takes only so many arguments). TextDecoder cannot: its "latin1" is
// windows-1252, which maps some bytes to other characters.
const BYTES_PER_CALL = 8192;
const byteString = (bytes) => {
  const parts = [];
  for (let at = 0; at < bytes.length; at += BYTES_PER_CALL) {
    parts.push(String.fromCharCode.apply(null, bytes.subarray(at, at + BYTES_PER_CALL)));
  }
  return parts.join("");
};
// The handler picks the response's headers. Most are ASCII, whose UTF-8 is one byte per
// character (any other character takes more): `TextEncoder` does those in its own code.
const stringBytes = (s) => {
  const ascii = utf8.encode(s);
  if (ascii.length === s.length) return ascii;
  // `Headers` holds nothing above U+00FF: one byte per character.
  const bytes = new Uint8Array(s.length);
  for (let i = 0; i < s.length; i++) bytes[i] = s.charCodeAt(i);
  return bytes;
};

// ---- Requests ----------------------------------------------------------------------------

/** An incoming request, its body already read in full. */
export class Request {
  constructor(method, pathWithQuery, headers, body) {
    const q = pathWithQuery.indexOf("?");
    /** `"GET"`, `"POST"`, ...: always upper case. */
    this.method = method;
    /** The path without the query, as the client sent it (not decoded). */
    this.path = (q < 0 ? pathWithQuery : pathWithQuery.slice(0, q)) || "/";
    /** The raw query string, without the `?`. */
    this.query = q < 0 ? "" : pathWithQuery.slice(q + 1);
    /** The query decoded: `req.searchParams.get("name")`. */
    this.searchParams = new URLSearchParams(this.query);
    /** A standard `Headers`: `req.headers.get("content-type")` (case-insensitive). */
    this.headers = headers;
    /** The body as bytes (empty if there is none). */
    this.body = body;
  }

  /** The body as UTF-8 text. */
  text() {
    return fromUtf8.decode(this.body);
  }

  /** The body parsed as JSON; throws a `SyntaxError` (a 500 unless caught) if it is not. */
  json() {
    return JSON.parse(this.text());
  }

  /** An `application/x-www-form-urlencoded` body, decoded: `req.form().get("name")`. */
  form() {
    return new URLSearchParams(this.text());
  }
}

// ---- Responses ---------------------------------------------------------------------------
//
// A handler returns a standard `Response`, e.g. `new Response("hi", { status: 201 })` or
// `Response.json(value)`, or a string (a 200 `text/plain` answer). These two helpers cover
// what the standard constructors make awkward.

/** A `text/html` response: 200 unless `init.status` says otherwise. */
export function html(body, init = {}) {
  const headers = new Headers(init.headers);
  headers.set("content-type", "text/html; charset=utf-8");
  return new Response(body, { ...init, headers });
}

/** A redirect to `location`, which may be relative (`Response.redirect` needs a full URL).
 * The default `303 See Other` is the answer to a form post. */
export function redirect(location, status = 303) {
  return new Response(null, { status, headers: { location } });
}

/** Throw one to answer with `status`; for a 4xx the message is the body. */
export class HttpError extends Error {
  constructor(status, message = "") {
    super(message);
    this.name = "HttpError";
    this.status = status;
  }
}

// ---- The handler -------------------------------------------------------------------------

/**
 * Turns `fn(request)` into the `wasi:http/incoming-handler` export. Export the result as
 * `incomingHandler`: componentize-js binds the export by that name.
 *
 * `fn` may be async and returns a `Response` or a string. What it throws becomes the error's
 * answer: an `HttpError`'s status, 503 with `Retry-After` for an unavailable store, else 500.
 * A 5xx says no more than its status, so internals do not leak; the error goes to stderr,
 * which the host logs.
 */
export function handler(fn) {
  return {
    async handle(incoming, out) {
      let response;
      try {
        response = await fn(readRequest(incoming));
        if (typeof response === "string") response = new Response(response);
        if (!(response instanceof Response)) {
          throw new TypeError(`a handler returns a Response or a string, not ${response}`);
        }
      } catch (e) {
        response = errorResponse(e);
      }
      await writeResponse(out, response);
    },
  };
}

function readRequest(incoming) {
  const method = incoming.method();
  const headers = new Headers();
  for (const [name, value] of incoming.headers().entries()) {
    headers.append(name, byteString(value));
  }
  const request = new Request(
    method.tag === "other" ? method.val : method.tag.toUpperCase(),
    incoming.pathWithQuery() ?? "/",
    headers,
    new Uint8Array(0),
  );
  // GET and HEAD have a body only when they say so (RFC 9110 gives it no meaning); not
  // opening an empty one spares the usual request three host calls.
  const declaresBody =
    !["GET", "HEAD"].includes(request.method) ||
    headers.has("transfer-encoding") ||
    (headers.get("content-length") ?? "0").trim() !== "0";
  if (declaresBody) request.body = readBody(incoming.consume());
  return request;
}

function readBody(body) {
  const stream = body.stream();
  const chunks = [];
  try {
    for (;;) chunks.push(stream.blockingRead(65536n));
  } catch (e) {
    // The stream ends with the `closed` error; anything else is a real failure.
    if (e.payload?.tag !== "closed") throw e;
  }
  // A child resource must be dropped before its parent is finished.
  stream[Symbol.dispose]();
  IncomingBody.finish(body);
  const bytes = new Uint8Array(chunks.reduce((n, c) => n + c.length, 0));
  let at = 0;
  for (const c of chunks) {
    bytes.set(c, at);
    at += c.length;
  }
  return bytes;
}

function errorResponse(e) {
  const status =
    e instanceof HttpError
      ? e.status
      : (e instanceof KvError || e instanceof SessionError) && e.kind === "unavailable"
        ? 503
        : 500;
  if (status < 500) return new Response(`${e.message}\n`, { status });
  // SpiderMonkey's `stack` is the frames alone, without the message.
  console.error(`handler error (${status}): ${e}${e?.stack ? `\n${e.stack}` : ""}`);
  if (status === 503) {
    return new Response("service unavailable; retry shortly\n", { status, headers: { "retry-after": "1" } });
  }
  return new Response("internal server error\n", { status });
}

/** The most `blocking-write-and-flush` takes in one call. */
const ONE_CALL = 4096;

async function writeResponse(out, response) {
  const body = new Uint8Array(await response.arrayBuffer());
  const entries = [...response.headers].map(([n, v]) => [n, stringBytes(v)]);
  let fields;
  try {
    fields = Fields.fromList(entries);
  } catch (e) {
    console.error(`handler returned headers the host refuses: ${JSON.stringify(e.payload)}`);
    fields = new Fields();
  }
  const outgoing = new OutgoingResponse(fields);
  // A new response is already 200: one host call fewer for most responses.
  if (response.status !== 200) outgoing.setStatusCode(response.status);
  const outgoingBody = outgoing.body();
  ResponseOutparam.set(out, { tag: "ok", val: outgoing });
  if (body.length > 0) {
    const stream = outgoingBody.write();
    for (let at = 0; at < body.length; at += ONE_CALL) {
      stream.blockingWriteAndFlush(body.subarray(at, at + ONE_CALL));
    }
    stream[Symbol.dispose]();
  }
  OutgoingBody.finish(outgoingBody, undefined);
}

// ---- Host errors -------------------------------------------------------------------------
//
// The bindings throw a WIT error variant as an error whose `payload` is `{ tag, val }`. The
// wrappers below rethrow it as a KvError, SessionError or ConfigError, so `instanceof` tells
// where it came from and `kind` what happened.

class HostError extends Error {
  constructor({ tag, val }) {
    super(
      typeof val === "number"
        ? `${tag.replaceAll("-", " ")} (limit ${val} bytes)`
        : tag === "other" ? val : `${tag}: ${val}`,
    );
    this.name = new.target.name;
    /** The WIT variant: e.g. `"unavailable"` (the store is down; worth a retry later). */
    this.kind = tag;
    /** For the `*-too-large` kinds: the host's limit in bytes. */
    if (typeof val === "number") this.limit = val;
  }
}

/** kinds: `key-too-large`, `value-too-large` (with `limit`), `unavailable`, `other`. */
export class KvError extends HostError {}
/** kinds: `too-large` (with `limit`), `unavailable`, `other`. */
export class SessionError extends HostError {}
/** kinds: `upstream`, `io`. */
export class ConfigError extends HostError {}

/** `api` with every function rethrowing the host's error variant as `ErrorClass`. */
function rethrowing(api, ErrorClass) {
  const wrapped = {};
  for (const [name, f] of Object.entries(api)) {
    wrapped[name] = (...args) => {
      try {
        return f(...args);
      } catch (e) {
        throw e.payload?.tag ? new ErrorClass(e.payload) : e;
      }
    };
  }
  return wrapped;
}

const kvCalls = rethrowing(hostKv, KvError);
const sessionCalls = rethrowing(hostSession, SessionError);
const configCalls = rethrowing(hostConfig, ConfigError);

/** Strings are stored as UTF-8. */
function bytes(value) {
  return typeof value === "string" ? utf8.encode(value) : value;
}

function text(value) {
  return value === undefined ? undefined : fromUtf8.decode(value);
}

// ---- kv ----------------------------------------------------------------------------------

/**
 * Key-value storage: the one place a handler can keep something for the next request. Each
 * app has its own keyspace. Values are bytes (a string is stored as UTF-8).
 */
export const kv = {
  /** The value at `key` as bytes, or `undefined`. */
  get: (key) => kvCalls.get(key),
  /** The value at `key` as text, or `undefined`. */
  getText: (key) => text(kvCalls.get(key)),
  /** Stores `value`, replacing any earlier value and expiry; with `ttlMs` it expires then. */
  set: (key, value, { ttlMs } = {}) => kvCalls.set(key, bytes(value), ttlMs),
  /** Whether there was a key to delete. */
  delete: (key) => kvCalls.delete(key),
  exists: (key) => kvCalls.exists(key),
  /** Atomically adds `delta` (a missing key counts as 0) and returns the new value, stored
   * as decimal text. Keeps the key's expiry. (WIT's s64 comes back as a BigInt.) */
  increment: (key, delta = 1) => Number(kvCalls.increment(key, delta)),
  /** Sets `value` if the current value is `expected` (`undefined`: only if there is no such
   * key); whether it did. */
  compareAndSwap(key, expected, value, { ttlMs } = {}) {
    const was = expected === undefined ? undefined : bytes(expected);
    return kvCalls.compareAndSwap(key, was, bytes(value), ttlMs);
  },
  /** One page of the keys starting with `prefix`: `{ keys, cursor }`. Pass `cursor` back
   * for the next page; it is `undefined` after the last. `limit` is a hint. */
  listKeys: (prefix, { cursor, limit = 1000 } = {}) => kvCalls.listKeys(prefix, cursor, limit),
  /** Every key starting with `prefix`, sorted, fetched page by page. */
  allKeys(prefix) {
    const keys = new Set();
    let cursor;
    do {
      const page = kv.listKeys(prefix, { cursor });
      page.keys.forEach((k) => keys.add(k));
      cursor = page.cursor;
    } while (cursor !== undefined);
    return [...keys].sort();
  },
  /** Sets the key's expiry to `ttlMs` from now, or removes it (`undefined`); whether the key
   * exists. */
  expire: (key, ttlMs) => kvCalls.expire(key, ttlMs),
  /** Milliseconds until `key` expires: `Infinity` if it does not, `undefined` if there is
   * no such key. */
  ttl(key) {
    const expiry = kvCalls.ttl(key);
    if (expiry.tag === "missing") return undefined;
    return expiry.tag === "persistent" ? Infinity : Number(expiry.val);
  },
};

// ---- session -----------------------------------------------------------------------------

/**
 * The visitor's session: values kept between one visitor's requests, behind a cookie the host
 * manages. Reading never creates a session; the first `set` does. Call `regenerate` after
 * login and `destroy` at logout.
 */
export const session = {
  get: (name) => sessionCalls.get(name),
  getText: (name) => text(sessionCalls.get(name)),
  /** Stores `value` (a string is stored as UTF-8), creating the session if there is none. */
  set: (name, value) => sessionCalls.set(name, bytes(value)),
  remove: (name) => sessionCalls.remove(name),
  /** Removes every value but keeps the session. */
  clear: () => sessionCalls.clear(),
  /** Ends the session: data deleted, cookie cleared. */
  destroy: () => sessionCalls.destroy(),
  /** Moves the session to a fresh id, keeping its data; the old id stops working. */
  regenerate: () => sessionCalls.regenerate(),
  /** The session's id, or `undefined` while there is none. */
  id: () => sessionCalls.id(),
};

// ---- config ------------------------------------------------------------------------------

/** The app's variables (`[variables]` in tabula.toml, `--var`, `--secret`, a deploy). */
export const config = {
  /** The variable `name`, or `undefined`. */
  get: (name) => configCalls.get(name),
  /** Every variable, as an object. */
  all: () => Object.fromEntries(configCalls.getAll()),
};
