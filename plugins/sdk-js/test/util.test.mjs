// node --test plugins/sdk-js/test/
import { test } from "node:test";
import assert from "node:assert/strict";
import { glob, inCidr, globMatcher, cidrMatcher } from "../util.js";

test("inCidr matches IPv4 and IPv6 networks and nothing malformed", () => {
  const cases = [
    ["10.1.2.3", "10.0.0.0/8", true],
    ["11.1.2.3", "10.0.0.0/8", false],
    ["1.2.3.4", "0.0.0.0/0", true],
    ["10.0.0.1", "10.0.0.1", true],
    ["fd00::17", "fd00::/8", true],
    ["fe80::1", "fd00::/8", false],
    ["::1", "::1/128", true],
    ["2001:db8::1", "2001:db8::/32", true],
    ["2001:db9::1", "2001:db8::/32", false],
    // prefixes that end inside a 16-bit group
    ["10.15.2.3", "10.0.0.0/12", true],
    ["10.16.0.1", "10.0.0.0/12", false],
    ["fd00::1", "fc00::/7", true],
    ["fe00::1", "fc00::/7", false],
    ["FD00::1", "fd00::/8", true],
    ["1:2:3:4:5:6:7:8", "1:2:3:4:5:6:7:0/112", true],
    ["::ffff:10.1.2.3", "::ffff:10.0.0.0/104", true],
    ["::ffff:11.1.2.3", "::ffff:10.0.0.0/104", false],
    ["1:2:3:4:5:6:1.2.3.4", "1:2:3:4:5:6:102:304/128", true],
    // different families, malformed input: never a match
    ["10.1.2.3", "fd00::/8", false],
    ["fd00::1", "0.0.0.0/0", false],
    ["bad", "10.0.0.0/8", false],
    ["10.0.0.256", "10.0.0.0/8", false],
    ["10.0.0.1", "10.0.0.0/33", false],
    ["10.0.0.1", "10.0.0.0/8/8", false],
    ["1::2::3", "::/0", false],
    [undefined, "10.0.0.0/8", false],
  ];
  for (const [ip, cidr, want] of cases) {
    assert.equal(inCidr(ip, cidr), want, `${ip} in ${cidr}`);
  }
});

test("glob: * any run, ? one character, everything else literal", () => {
  assert.ok(glob("prod-*", "prod-a"));
  assert.ok(glob("prod-?", "prod-a"));
  assert.ok(!glob("prod-?", "prod-ab"));
  assert.ok(!glob("prod-*", "dev"));
  assert.ok(glob("a.b", "a.b"));
  assert.ok(!glob("a.b", "axb"), "a dot is not a regex wildcard");
  assert.ok(glob("(x)+", "(x)+"));
});

test("matchers compiled once agree with glob and inCidr", () => {
  const g = globMatcher(["prod-*", "stag?"]);
  for (const t of ["prod-a", "stage", "dev", "a.b", "prod-"]) {
    assert.equal(g(t), glob("prod-*", t) || glob("stag?", t), t);
  }
  const nets = ["10.0.0.0/8", "fd00::/8", "192.0.2.1"];
  const c = cidrMatcher(nets);
  for (const ip of ["10.9.9.9", "11.0.0.1", "fd00::5", "fe80::1", "192.0.2.1", "192.0.2.2", "bad", undefined]) {
    assert.equal(c(ip), nets.some((n) => inCidr(ip, n)), String(ip));
  }
  assert.throws(() => cidrMatcher(["10.0.0.300/8"]), /not a network/);
  assert.throws(() => cidrMatcher(["10.0.0.0/40"]), /too long/);
});

import { trackedConfig, unreadKey, locate, lineTable } from "../util.js";

test("a configuration key the policy never read is found, with its path", () => {
  const c = trackedConfig({ namespaces: ["a"], cidrs: ["10.0.0.0/8"], rules: [{ cidr: "x", typo: 1 }] });
  void c.namespaces;
  void c.cidrs;
  assert.equal(unreadKey(c), "rules");
  void c.rules[0].cidr;
  assert.equal(unreadKey(c), "rules[0].typo");
  void c.rules[0].typo;
  assert.equal(unreadKey(c), undefined);
  const enumerated = trackedConfig({ a: 1, b: 2 });
  assert.deepEqual(Object.keys(enumerated), ["a", "b"]);
  assert.equal(unreadKey(enumerated), undefined);
});

test("a bundle position maps back to the policy's source, skipping the SDK", () => {
  // Generated line 1 → sdk-js/index.js line 10; line 2 → app.js line 14 (VLQ by hand:
  // "AAST" = [0,0,9,0] → line 10; "ACIA" = [0,1,4,0] → source 1, line 14).
  const table = lineTable("AAST;ACIA");
  assert.deepEqual(table, [[0, 10], [1, 14]]);
  const lines = { sources: ["../sdk-js/index.js", "../src/app.js"], lines: table };
  const stack = "authenticate@/tmp/x/plugin.js:2:7\ndefinePlugin@/tmp/x/plugin.js:1:3";
  assert.equal(locate(stack, lines), "app.js:14");
  assert.equal(locate("inner@/tmp/x/plugin.js:1:3\nouter@/tmp/x/plugin.js:2:1", lines), "app.js:14");
  assert.equal(locate("no frames here", lines), "?");
});
