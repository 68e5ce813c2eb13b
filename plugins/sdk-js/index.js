// Write trustgate auth plugins in JavaScript.
//
// A plugin is an object with `configure(config)` (the operator's TOML table as a plain object;
// throw to reject it) and `authenticate(request, identity)`, turned into the component's
// `plugin` export by `definePlugin`; componentize-js builds the module into a WebAssembly
// component implementing `trustgate:auth@0.3.0`:
//
//   import { definePlugin, permit, deny, abstain } from "trustgate-plugin";
//   export const plugin = definePlugin({
//     // What every call reads, handed over with the call itself (anything else is still
//     // readable, at the cost of one more call into the gateway).
//     wants: { attributes: ["namespace"] },
//     configure(config) { this.allowed = config.namespaces; },
//     authenticate(request, identity) {
//       if (!identity) return abstain();
//       return this.allowed.includes(identity.attribute("namespace"))
//         ? permit()
//         : deny("forbidden", "namespace-not-allowed", "not in the list");
//     },
//   });
//
// Mistakes surface where they are made: `throw new ConfigError("key", "message")` in
// `configure` names the key; a configuration key the policy never reads is an error (set
// `allowUnknownConfigKeys: true` to read keys dynamically); an exception in `authenticate`
// fails the plugin with the policy's own file, line and message (the build maps the bundle
// back to your sources).
//
// Credentials are opaque: `request.tokenReview(audiences)` asks the gateway to verify them;
// reading `request.credentials().token()` needs the operator's `credentials = "read"` grant.

import {
  log as hostLog,
  nowMs as hostNowMs,
  readRequest,
  readSoFar,
  presentedCredentials,
  tokenReview,
  verifyJwt,
} from "trustgate:auth/host@0.3.0";
import { trackedConfig, unreadKey, describeError } from "./util.js";

/** Rejects the configuration naming the key at fault (`rules[1].cidr`). */
export class ConfigError extends Error {
  constructor(key, message) {
    super(`${key}: ${message}`);
    this.key = key;
    this.detail = message;
  }
}

/** Lets the identity so far through, narrowed if asked. */
export function permit({ keepRoles, keepScopes, addAttributes, expiresAtMs, vetoSkipPairing } = {}) {
  return {
    tag: "permit",
    val: {
      roles: keepRoles,
      scopes: keepScopes,
      attributes: Object.entries(addAttributes ?? {}),
      expiresAtMs: expiresAtMs === undefined ? undefined : BigInt(expiresAtMs),
      vetoSkipPairing: Boolean(vetoSkipPairing),
    },
  };
}

/** Establishes an identity. */
export function allow({ subject, method, roles, groups, attributes, scopes, expiresAtMs, skipPairing }) {
  return {
    tag: "allow",
    val: {
      subject,
      method,
      groups: groups ?? [],
      attributes: Object.entries(attributes ?? {}),
      roles: roles ?? [],
      scopes: scopes ?? [],
      expiresAtMs: expiresAtMs === undefined ? undefined : BigInt(expiresAtMs),
      skipPairing: Boolean(skipPairing),
    },
  };
}

/**
 * Refuses the peer: `code` is "unauthenticated", "forbidden", "unavailable" or
 * "rate-limited"; `reason` is the stable word the client sees; `message` goes to the log only.
 */
export function deny(code, reason, message = "", retryAfterMs) {
  return { tag: "deny", val: { code, reason, message, retryAfterMs } };
}

/** No opinion. */
export function abstain() {
  return { tag: "abstain" };
}

/** The gateway's wall-clock time in Unix milliseconds. */
export function nowMs() {
  return Number(hostNowMs());
}

/** A line in the gateway's log ("trace", "debug", "info", "warn", "error"). Never log a token. */
export function log(level, message) {
  hostLog(level, message);
}

export { glob, inCidr, globMatcher, cidrMatcher } from "./util.js";

const REQUEST_FIELDS = ["role", "scopes", "method", "remote", "tls", "client", "connId", "device", "presented"];
const IDENTITY_FIELDS = ["subject", "method", "groups", "attributes", "roles", "scopes", "expiresAtMs", "skipPairing"];
const all = (names) => Object.fromEntries(names.map((n) => [n, true]));

function ipText({ ip, port }) {
  if (ip.tag === "ipv4") return `${ip.val.join(".")}:${port}`;
  const groups = ip.val.map((g) => g.toString(16));
  return `[${groups.join(":")}]:${port}`;
}

/** Puts the request facts of `facts` in `into`. */
function requestFacts(facts, into) {
  for (const f of facts) {
    switch (f.tag) {
      case "role":
      case "scopes":
      case "method":
      case "tls":
      case "client":
      case "connId":
      case "device":
        into[f.tag] = f.val;
        break;
      case "remote":
        into.remoteAddr = ipText(f.val);
        break;
      case "presented":
        into.presented = f.val;
        break;
    }
  }
}

/** Puts the identity facts of `facts` in `into`; whether there is an identity. */
function identityFacts(facts, into) {
  let found = false;
  for (const f of facts) {
    switch (f.tag) {
      case "identity":
        found = true;
        break;
      case "subject":
      case "groups":
      case "roles":
      case "skipPairing":
        into[f.tag] = f.val;
        break;
      case "identityMethod":
        into.method = f.val;
        break;
      case "identityScopes":
        into.scopes = f.val;
        break;
      case "expiresAtMs":
        into.expiresAtMs = Number(f.val);
        break;
      case "attribute":
        (into.attributes ??= {})[f.val[0]] = f.val[1];
        break;
    }
  }
  return found;
}

/** The credentials the peer presented, as an opaque handle. */
class Credentials {
  constructor(raw) {
    this.raw = raw;
  }
  method() {
    return this.raw.method();
  }
  /** The bearer token; throws without the operator's grant. */
  token() {
    return this.raw.token();
  }
}

const reviewSpec = (audiences) => ({
  audiences,
  extra: [],
  fields: { uid: true, groups: true, audiences: true },
});

/** The request being decided on. Declared facts came with the call; the first read of any
 * other fetches all of them at once. */
class Request {
  constructor(facts, declared) {
    this.f = {};
    requestFacts(facts, this.f);
    this.declared = declared;
  }
  get(name, field) {
    if (!(name in this.f) && !this.declared[field] && !this.fetched) {
      this.fetched = true;
      requestFacts(readRequest(all(REQUEST_FIELDS)), this.f);
    }
    return this.f[name];
  }
  get role() {
    return this.get("role", "role") ?? "";
  }
  get method() {
    return this.get("method", "method") ?? "";
  }
  get scopes() {
    return this.get("scopes", "scopes") ?? [];
  }
  get remoteAddr() {
    return this.get("remoteAddr", "remote") ?? "";
  }
  /** The peer's IP address, without the port. */
  get ip() {
    const addr = this.remoteAddr;
    if (addr.startsWith("[")) return addr.slice(1, addr.indexOf("]"));
    const i = addr.lastIndexOf(":");
    return i > 0 && addr.indexOf(":") === i ? addr.slice(0, i) : addr;
  }
  get tls() {
    return Boolean(this.get("tls", "tls"));
  }
  get client() {
    return this.get("client", "client");
  }
  get device() {
    return this.get("device", "device");
  }
  get hasToken() {
    return Boolean(this.get("presented", "presented")?.token);
  }
  credentials() {
    return new Credentials(presentedCredentials());
  }
  /** A Kubernetes TokenReview of the bearer token; throws a review error. */
  tokenReview(audiences) {
    return tokenReview(reviewSpec(audiences));
  }
  /** Local verification against the cluster's OIDC keys. */
  verifyJwt(audiences) {
    return verifyJwt(reviewSpec(audiences));
  }
}

/** The identity earlier plugins established. */
class Identity {
  constructor(facts, declared, keys) {
    this.f = facts;
    this.declared = declared;
    this.keys = new Set(keys);
  }
  fetch() {
    if (!this.fetched) {
      this.fetched = true;
      delete this.f.attributes;
      identityFacts(readSoFar(all(IDENTITY_FIELDS), []), this.f);
      this.f.attributes ??= {};
      this.declared = { ...this.declared, attributes: true };
    }
  }
  get(name) {
    if (!(name in this.f) && !this.declared[name]) this.fetch();
    return this.f[name];
  }
  get subject() {
    return this.get("subject") ?? "";
  }
  get method() {
    return this.get("method") ?? "";
  }
  get groups() {
    return this.get("groups") ?? [];
  }
  inGroup(group) {
    return this.groups.includes(group);
  }
  attribute(key) {
    if (!this.keys.has(key) && !this.declared.attributes) this.fetch();
    return this.f.attributes?.[key];
  }
  get attributes() {
    if (!this.declared.attributes) this.fetch();
    return { ...(this.f.attributes ?? {}) };
  }
  get roles() {
    return this.get("roles") ?? [];
  }
}

function flags(names, table, what) {
  const out = {};
  for (const n of names ?? []) {
    if (!table.includes(n)) throw new Error(`wants: unknown ${what} fact \`${n}\` (one of ${table.join(", ")})`);
    out[n] = true;
  }
  return out;
}

/**
 * The `plugin` export for `policy`: `configure(config)` gets the operator's table as an object
 * (a thrown `ConfigError` names its key; any other error, and a key the policy never reads,
 * reject it too); `authenticate(request, identity)` decides, `identity` being `undefined`
 * until an earlier plugin established one. `policy.wants` declares what every call reads:
 * `{ request: [...], soFar: [...], attributes: [...], methods: [...] }`.
 */
export function definePlugin(policy) {
  let configured = false;
  const wants = policy.wants ?? {};
  const declared = {
    request: flags(wants.request, REQUEST_FIELDS, "request"),
    soFar: flags(wants.soFar, IDENTITY_FIELDS, "identity"),
  };
  return {
    configure(config) {
      const table = trackedConfig(JSON.parse(config));
      try {
        policy.configure?.call(policy, table);
      } catch (e) {
        if (e instanceof ConfigError) throw `${e.key}: ${e.detail}`;
        throw `the policy's configure failed at ${describeError(e)}`;
      }
      const unread = policy.allowUnknownConfigKeys ? undefined : unreadKey(table);
      if (unread !== undefined) {
        throw `${unread}: unknown key: the policy does not read it (a typo? A policy reading keys it does not know in advance sets allowUnknownConfigKeys: true)`;
      }
      configured = true;
      return {
        methods: wants.methods ?? [],
        request: declared.request,
        soFar: declared.soFar,
        attributes: wants.attributes ?? [],
        verification: undefined,
        template: undefined,
      };
    },
    authenticate(facts) {
      if (!configured) return deny("unavailable", "plugin-not-configured", "authenticate before configure");
      try {
        const found = {};
        const identity = identityFacts(facts, found)
          ? new Identity(found, declared.soFar, wants.attributes ?? [])
          : undefined;
        return policy.authenticate.call(policy, new Request(facts, declared.request), identity);
      } catch (e) {
        return { tag: "fail", val: describeError(e) };
      }
    },
  };
}
