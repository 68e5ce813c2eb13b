// Helpers of the JavaScript SDK that need no host: pure functions, tested with `node --test`
// (plugins/sdk-js/test/) and re-exported by index.js.

/** Shell-style matching: `*` any run of characters, `?` exactly one. */
export function glob(pattern, text) {
  const re = pattern.replace(/[.+^${}()|[\]\\]/g, "\\$&").replace(/\*/g, ".*").replace(/\?/g, ".");
  return new RegExp(`^${re}$`).test(text);
}

function ipv4(ip) {
  const parts = ip.split(".");
  if (parts.length !== 4) return null;
  let n = 0n;
  for (const p of parts) {
    if (!/^\d{1,3}$/.test(p) || Number(p) > 255) return null;
    n = n * 256n + BigInt(p);
  }
  return n;
}

function ipv6(ip) {
  // An embedded IPv4 tail (`::ffff:10.1.2.3`) is two groups written another way.
  if (ip.includes(".")) {
    const dot = ip.lastIndexOf(":");
    const v4 = ipv4(ip.slice(dot + 1));
    if (v4 === null) return null;
    ip = `${ip.slice(0, dot + 1)}${(v4 >> 16n).toString(16)}:${(v4 & 0xffffn).toString(16)}`;
  }
  const halves = ip.split("::");
  if (halves.length > 2) return null;
  const groups = (h) => (h === "" ? [] : h.split(":"));
  const head = groups(halves[0]);
  const rest = halves.length === 2 ? groups(halves[1]) : [];
  const given = head.length + rest.length;
  if (halves.length === 1 ? given !== 8 : given > 7) return null;
  let n = 0n;
  for (const g of [...head, ...Array(8 - given).fill("0"), ...rest]) {
    if (!/^[0-9a-fA-F]{1,4}$/.test(g)) return null;
    n = (n << 16n) | BigInt(parseInt(g, 16));
  }
  return n;
}

/** An address as [bits, value], or null if it is not one. */
function address(ip) {
  if (ip.includes(":")) {
    const v = ipv6(ip);
    return v === null ? null : [128, v];
  }
  const v = ipv4(ip);
  return v === null ? null : [32, v];
}

/**
 * Whether the address `ip` (IPv4 or IPv6) is in the network `cidr` ("10.0.0.0/8",
 * "fd00::/8"); false for a malformed address or network, or a different family.
 */
export function inCidr(ip, cidr) {
  const [net, bits, extra] = String(cidr).split("/");
  const a = address(String(ip ?? ""));
  const b = address(net);
  if (a === null || b === null || a[0] !== b[0] || extra !== undefined) return false;
  const width = a[0];
  if (bits !== undefined && !/^\d{1,3}$/.test(bits)) return false;
  const len = bits === undefined ? width : Number(bits);
  if (len > width) return false;
  const shift = BigInt(width - len);
  return a[1] >> shift === b[1] >> shift;
}

/**
 * A matcher for a list of globs, compiled once (in `configure`): `matcher(text)` is whether any
 * pattern matches. Cheaper per call than `glob`, which compiles its pattern every time.
 */
export function globMatcher(patterns) {
  const res = patterns.map(
    (p) => new RegExp(`^${p.replace(/[.+^${}()|[\]\\]/g, "\\$&").replace(/\*/g, ".*").replace(/\?/g, ".")}$`),
  );
  return (text) => res.some((re) => re.test(text));
}

/**
 * A matcher for a list of networks, parsed once (in `configure`); throws on a malformed
 * network, so a bad configuration is rejected at load. `matcher(ip)` is whether the address
 * is in any of them (false for a malformed address).
 */
export function cidrMatcher(cidrs) {
  const nets = cidrs.map((cidr) => {
    const [net, bits, extra] = String(cidr).split("/");
    const a = address(net);
    if (a === null || extra !== undefined || (bits !== undefined && !/^\d{1,3}$/.test(bits))) {
      throw new Error(`${cidr} is not a network (write e.g. 10.0.0.0/8 or fd00::/8)`);
    }
    const len = bits === undefined ? a[0] : Number(bits);
    if (len > a[0]) throw new Error(`${cidr}: a /${len} prefix is too long`);
    const shift = BigInt(a[0] - len);
    return [a[0], shift, a[1] >> shift];
  });
  return (ip) => {
    const a = address(String(ip ?? ""));
    return a !== null && nets.some(([w, shift, prefix]) => w === a[0] && a[1] >> shift === prefix);
  };
}

// === The configuration, with the keys read counted ===

const READ = Symbol("trustgate.read");

/**
 * The operator's configuration as the policy sees it: the same object, remembering which keys
 * the policy read (nested tables and tables in lists too), so a key it never reads — a typo —
 * can be reported. Enumerating a table (`Object.keys`, `for…in`, spreading) counts as reading
 * all of it.
 */
export function trackedConfig(value, path = "") {
  if (Array.isArray(value)) {
    return value.map((v, i) => trackedConfig(v, `${path}[${i}]`));
  }
  if (value === null || typeof value !== "object") return value;
  const read = new Set();
  let all = false;
  const target = {};
  for (const [k, v] of Object.entries(value)) target[k] = trackedConfig(v, path ? `${path}.${k}` : k);
  return new Proxy(target, {
    get(t, key) {
      if (key === READ) return { read, all, path, target: t };
      if (typeof key === "string") read.add(key);
      return t[key];
    },
    has(t, key) {
      if (typeof key === "string") read.add(key);
      return key in t;
    },
    ownKeys(t) {
      all = true;
      return Reflect.ownKeys(t);
    },
  });
}

/** The first key (with its path) of a tracked configuration the policy never read. */
export function unreadKey(config) {
  const state = config?.[READ];
  if (!state) return undefined;
  if (state.all) return undefined;
  for (const [k, v] of Object.entries(state.target)) {
    const at = state.path ? `${state.path}.${k}` : k;
    if (!state.read.has(k)) return at;
    for (const child of Array.isArray(v) ? v : [v]) {
      const deeper = unreadKey(child);
      if (deeper !== undefined) return deeper;
    }
  }
  return undefined;
}

// === Where in the policy's own source ===

const basename = (p) => p.slice(p.lastIndexOf("/") + 1);

/**
 * `app.js:14` for the innermost frame of `stack` in the policy's own sources. The build
 * appends `globalThis.__TRUSTGATE_SOURCE_LINES` (the bundle's lines mapped to sources); a
 * frame in the SDK is skipped.
 */
export function locate(stack, lines = globalThis.__TRUSTGATE_SOURCE_LINES) {
  for (const frame of String(stack ?? "").split("\n")) {
    const m = /([^\s@(]*):(\d+):(\d+)\)?\s*$/.exec(frame);
    if (!m) continue;
    const line = Number(m[2]);
    if (!lines) return `${basename(m[1])}:${line}`;
    const entry = lines.lines[line - 1];
    if (!entry) continue;
    const source = lines.sources[entry[0]];
    if (/(^|\/)(sdk-js|trustgate-plugin)\//.test(source)) continue;
    return `${basename(source)}:${entry[1]}`;
  }
  return "?";
}

/** `app.js:14: TypeError: message` for an error thrown by the policy. */
export function describeError(e) {
  const name = e?.name ?? "Error";
  const message = e?.message ?? String(e);
  return `${locate(e?.stack)}: ${name}: ${message}`;
}

// === Source maps, for the build ===

const B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

function vlq(segment) {
  const out = [];
  let value = 0;
  let shift = 0;
  for (const ch of segment) {
    const digit = B64.indexOf(ch);
    if (digit < 0) return null;
    value += (digit & 31) << shift;
    if (digit & 32) {
      shift += 5;
    } else {
      out.push(value & 1 ? -(value >>> 1) : value >>> 1);
      value = 0;
      shift = 0;
    }
  }
  return out;
}

/**
 * A source map's `mappings` as a line table: for each generated line, `[source index,
 * original line (1-based)]` of its first mapped segment (or `null`).
 */
export function lineTable(mappings) {
  const lines = [];
  let source = 0;
  let origLine = 0;
  for (const line of mappings.split(";")) {
    let first = null;
    for (const seg of line.split(",")) {
      if (!seg) continue;
      const f = vlq(seg);
      if (!f || f.length < 4) continue;
      source += f[1];
      origLine += f[2];
      first ??= [source, origLine + 1];
    }
    lines.push(first);
  }
  return lines;
}
