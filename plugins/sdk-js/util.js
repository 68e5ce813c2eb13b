// Helpers of the JavaScript SDK that need no host: pure functions, tested with `node --test`
// (plugins/sdk-js/test/) and re-exported by index.js.

/** Shell-style matching: `*` any run of characters, `?` exactly one. */
export function glob(pattern, text) {
  const re = pattern.replace(/[.+^${}()|[\]\\]/g, "\\$&").replace(/\*/g, ".*").replace(/\?/g, ".");
  return new RegExp(`^${re}$`).test(text);
}

// Addresses are arrays of 16-bit groups (2 for IPv4, 8 for IPv6) compared group by group:
// plain numbers, because BigInt arithmetic in the engine's interpreter (no JIT inside the
// sandbox) cost more than everything else a typical policy does per call.

/** A decimal byte (`0`–`255`, at most three digits), or -1. */
function byte(p) {
  if (p.length === 0 || p.length > 3) return -1;
  let v = 0;
  for (let i = 0; i < p.length; i++) {
    const d = p.charCodeAt(i) - 48;
    if (d < 0 || d > 9) return -1;
    v = v * 10 + d;
  }
  return v > 255 ? -1 : v;
}

function ipv4(ip) {
  const parts = ip.split(".");
  if (parts.length !== 4) return null;
  const b = parts.map(byte);
  if (b.some((v) => v < 0)) return null;
  return [(b[0] << 8) | b[1], (b[2] << 8) | b[3]];
}

/** A hexadecimal group (1–4 digits), or -1. */
function group(g) {
  if (g.length === 0 || g.length > 4) return -1;
  let v = 0;
  for (let i = 0; i < g.length; i++) {
    const c = g.charCodeAt(i);
    const d = c >= 48 && c <= 57 ? c - 48 : c >= 97 && c <= 102 ? c - 87 : c >= 65 && c <= 70 ? c - 55 : -1;
    if (d < 0) return -1;
    v = v * 16 + d;
  }
  return v;
}

function ipv6(ip) {
  // An embedded IPv4 tail (`::ffff:10.1.2.3`) is two groups written another way.
  let tail = [];
  if (ip.includes(".")) {
    const colon = ip.lastIndexOf(":");
    const v4 = ipv4(ip.slice(colon + 1));
    if (v4 === null) return null;
    tail = v4;
    ip = ip.slice(0, colon + 1) + "0:0";
  }
  const halves = ip.split("::");
  if (halves.length > 2) return null;
  const groups = (h) => (h === "" ? [] : h.split(":"));
  const head = groups(halves[0]);
  const rest = halves.length === 2 ? groups(halves[1]) : [];
  const given = head.length + rest.length;
  if (halves.length === 1 ? given !== 8 : given > 7) return null;
  const out = [];
  for (const g of head) out.push(group(g));
  for (let i = given; i < 8; i++) out.push(0);
  for (const g of rest) out.push(group(g));
  if (out.some((v) => v < 0)) return null;
  if (tail.length === 2) {
    out[6] = tail[0];
    out[7] = tail[1];
  }
  return out;
}

/** An address as its groups, or null if it is not one. */
function address(ip) {
  return ip.includes(":") ? ipv6(ip) : ipv4(ip);
}

/** Whether `a` and `b` (same family) agree on their first `len` bits. */
function samePrefix(a, b, len) {
  let i = 0;
  for (; len >= 16; len -= 16, i++) if (a[i] !== b[i]) return false;
  if (len === 0) return true;
  const mask = (0xffff << (16 - len)) & 0xffff;
  return (a[i] & mask) === (b[i] & mask);
}

/**
 * Whether the address `ip` (IPv4 or IPv6) is in the network `cidr` ("10.0.0.0/8",
 * "fd00::/8"); false for a malformed address or network, or a different family.
 */
export function inCidr(ip, cidr) {
  const [net, bits, extra] = String(cidr).split("/");
  const a = address(String(ip ?? ""));
  const b = address(net);
  if (a === null || b === null || a.length !== b.length || extra !== undefined) return false;
  const width = a.length * 16;
  if (bits !== undefined && !/^\d{1,3}$/.test(bits)) return false;
  const len = bits === undefined ? width : Number(bits);
  if (len > width) return false;
  return samePrefix(a, b, len);
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
    const len = bits === undefined ? a.length * 16 : Number(bits);
    if (len > a.length * 16) throw new Error(`${cidr}: a /${len} prefix is too long`);
    return [a, len];
  });
  return (ip) => {
    const a = address(String(ip ?? ""));
    return a !== null && nets.some(([net, len]) => net.length === a.length && samePrefix(a, net, len));
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
