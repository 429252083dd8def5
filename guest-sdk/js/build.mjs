#!/usr/bin/env node
// Builds a JavaScript app into a tabula component:
//
//   node guest-sdk/js/build.mjs APP OUT.wasm
//
// APP is the app's entry module, or a directory holding `app.js`. The app imports the SDK as
// "tabula-sdk" (and may import npm packages installed beside it).
//
// Two steps:
// 1. esbuild bundles the app, the SDK and their imports into one module. componentize-js
//    loads modules only from the entry's own directory, so an app could not import the SDK
//    from here otherwise. The `wasi:` and `tabula:` imports stay imports of the component.
// 2. componentize-js (SpiderMonkey, snapshotted with Wizer) makes a component of the bundle
//    for world `tabula:host/app` in this repository's wit/, the world tabula serves.
//
// It calls componentize-js' API rather than `jco componentize`: jco 1.35 reads the WIT
// directory through a WASI file system with nothing preopened, and fails. For the same reason
// package.json pins @bytecodealliance/preview2-shim 0.25.0, the last release that preopens
// `/` by default: componentize-js imports it without declaring it, and 0.26 (jco's) would
// leave the WIT directory unreadable here too.
//
// Nothing here needs the network once `npm install` has run: the one dependency that downloads
// at run time is weval, used only by componentize-js' ahead-of-time mode (`enableAot`), which
// this leaves off.

import { mkdtemp, rm, stat, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

import { componentize } from "@bytecodealliance/componentize-js";
import { build } from "esbuild";

const WIT = fileURLToPath(new URL("../../wit", import.meta.url));
const DEFAULT_WORLD = "tabula:host/app";
const SDK = fileURLToPath(new URL("./tabula.js", import.meta.url));

// componentize-js 0.23.0 passes a negative s64 argument (a negative `kv.increment` delta) to
// its engine as a negative BigInt, which the engine takes only unsigned: the instance aborts
// (bytecodealliance/ComponentizeJS#343). Until that is fixed, its generated bindings pass the
// same 64 bits as an unsigned BigInt.
const { splicer } = await import(
  new URL(
    "../lib/spidermonkey-embedding-splicer.js",
    import.meta.resolve("@bytecodealliance/componentize-js"),
  )
);
const spliceBindings = splicer.spliceBindings;
splicer.spliceBindings = (...args) => {
  const spliced = spliceBindings(...args);
  const signed =
    /(function toInt64\(val\) \{\s*const converted = BigInt\(val\)\s*return BigInt\.)asIntN/;
  if (spliced.jsBindings.includes("function toInt64(")) {
    if (!signed.test(spliced.jsBindings)) {
      throw new Error("componentize-js' toInt64 changed: revisit the ComponentizeJS#343 fix");
    }
    spliced.jsBindings = spliced.jsBindings.replace(signed, "$1asUintN");
  }
  return spliced;
};

// A third argument names another world of wit/ (bench/compare.sh builds a plain
// `wasi:http/proxy@0.2.12` hello that other hosts can run too).
const [app, out, WORLD = DEFAULT_WORLD] = process.argv.slice(2);
if (!app || !out) {
  console.error("usage: node build.mjs APP_DIR|ENTRY.js OUT.wasm [WORLD]");
  process.exit(2);
}
const started = performance.now();
const work = await mkdtemp(join(tmpdir(), "tabula-js-"));
try {
  const entry = (await stat(app)).isDirectory() ? join(app, "app.js") : app;
  // Named app.js so that stack traces in the host's log say so.
  const bundle = join(work, "app.js");
  const { metafile } = await build({
    entryPoints: [resolve(entry)],
    outfile: bundle,
    bundle: true,
    format: "esm",
    // SpiderMonkey runs current JavaScript: no down-levelling.
    target: "esnext",
    alias: { "tabula-sdk": SDK },
    external: ["wasi:*", "tabula:*"],
    logLevel: "error",
    metafile: true,
  });
  // Without this export componentize-js fails with a message about the world, not the app.
  if (!metafile.outputs[Object.keys(metafile.outputs)[0]].exports.includes("incomingHandler")) {
    throw new Error(`${entry} must export incomingHandler: see tabula.js`);
  }
  const { component } = await componentize({
    sourcePath: bundle,
    witPath: WIT,
    worldName: WORLD,
  });
  await writeFile(out, component);
} catch (e) {
  // esbuild has printed its errors (`e.errors`) already.
  console.error(e.errors ? "build failed" : `build failed: ${e.message}`);
  process.exitCode = 1;
} finally {
  await rm(work, { recursive: true, force: true });
}

if (!process.exitCode) {
  const secs = ((performance.now() - started) / 1000).toFixed(1);
  const mib = ((await stat(out)).size / 2 ** 20).toFixed(1);
  console.log(`${out}: ${mib} MiB in ${secs}s`);
}
