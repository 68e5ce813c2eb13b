// Builds a trustgate plugin written in JavaScript into a WebAssembly component:
//
//   node plugins/sdk-js/build.mjs app.js plugin.wasm
//
// The module and this SDK are bundled into one file (rolldown), then componentize-js embeds it
// in a JavaScript engine exporting `trustgate:auth/plugin@0.3.0`. Both tools are pinned in
// this directory's package.json; run `npm ci` here once.
import { fileURLToPath } from "node:url";
import { dirname, resolve } from "node:path";
import { mkdtemp, writeFile, rm } from "node:fs/promises";
import { existsSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { rolldown } from "rolldown";
import { componentize } from "@bytecodealliance/componentize-js";
import { lineTable } from "./util.js";

const here = dirname(fileURLToPath(import.meta.url));

// The contract: the nearest `wit/auth.wit` above this SDK (the repository's, or a scaffolded
// project's own copy).
function witDir() {
  for (let dir = here; ; dir = dirname(dir)) {
    if (existsSync(join(dir, "wit", "auth.wit"))) return join(dir, "wit");
    if (dirname(dir) === dir) throw new Error("no wit/auth.wit above " + here);
  }
}
const [source, out] = process.argv.slice(2);
if (!source || !out) {
  console.error("usage: node build.mjs <plugin.js> <out.wasm>");
  process.exit(2);
}

const bundle = await rolldown({
  input: resolve(source),
  external: [/^trustgate:auth\//],
  resolve: { alias: { "trustgate-plugin": join(here, "index.js") } },
  logLevel: "warn",
});
const { output } = await bundle.generate({ format: "esm", sourcemap: true });
const dir = await mkdtemp(join(tmpdir(), "trustgate-js-"));
const bundled = join(dir, "plugin.js");
// The bundle's lines mapped back to the sources, appended (not prepended: the lines stay
// where the map says), so an error names `app.js:14`, not a line of the bundle.
const map = output[0].map;
const lines = { sources: map.sources.map(String), lines: lineTable(map.mappings) };
await writeFile(bundled, `${output[0].code}\nglobalThis.__TRUSTGATE_SOURCE_LINES = ${JSON.stringify(lines)};\n`);
try {
  const { component } = await componentize({
    sourcePath: bundled,
    witPath: witDir(),
    worldName: "auth-plugin",
    // Plugins get no network: leave the HTTP and fetch-event machinery out.
    disableFeatures: ["http", "fetch-event"],
  });
  await writeFile(out, component);
  console.log(`built ${out} (${component.length} bytes)`);
} finally {
  await rm(dir, { recursive: true, force: true });
}
