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
