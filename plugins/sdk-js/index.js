// Write trustgate auth plugins in JavaScript.
//
// A plugin is an object with `configure(config)` (the operator's TOML table as a plain object;
// throw to reject it) and `authenticate(request, identity)`, turned into the component's
// `plugin` export by `definePlugin`; componentize-js builds the module into a WebAssembly
// component implementing `trustgate:auth@0.2.0`:
//
//   import { definePlugin, permit, deny, abstain } from "trustgate-plugin";
//   export const plugin = definePlugin({
//     configure(config) { this.allowed = config.namespaces; },
//     authenticate(request, identity) {
//       if (!identity) return abstain();
//       return this.allowed.includes(identity.attribute("namespace"))
//         ? permit()
//         : deny("forbidden", "namespace-not-allowed", "not in the list");
//     },
//   });
//
// Credentials are opaque: `request.credentials().review(audiences)` asks the gateway to verify
// them; reading `token()` needs the operator's `credentials = "read"` grant.

import { log as hostLog, nowMs as hostNowMs, tokenReview, verifyJwt } from "trustgate:auth/host@0.2.0";

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

/** The credentials the peer presented, as an opaque handle. */
class Credentials {
  constructor(raw) {
    this.raw = raw;
  }
  method() {
    return this.raw.method();
  }
  hasToken() {
    return this.raw.hasToken();
  }
  /** The bearer token; throws without the operator's grant. */
  token() {
    return this.raw.token();
  }
  /** A Kubernetes TokenReview of the bearer token; throws a review error. */
  review(audiences) {
    return tokenReview(this.raw, audiences);
  }
  /** Local verification against the cluster's OIDC keys. */
  verifyJwt(audiences) {
    return verifyJwt(this.raw, audiences);
  }
}

/** The request being decided on; facts are fetched when first read. */
class Request {
  constructor(raw) {
    this.raw = raw;
  }
  get role() {
    return (this._role ??= this.raw.role());
  }
  get method() {
    return this.raw.method();
  }
  get scopes() {
    return this.raw.scopes();
  }
  get remoteAddr() {
    return (this._addr ??= this.raw.remoteAddr());
  }
  /** The peer's IP address, without the port. */
  get ip() {
    const addr = this.remoteAddr;
    if (addr.startsWith("[")) return addr.slice(1, addr.indexOf("]"));
    const i = addr.lastIndexOf(":");
    return i > 0 && addr.indexOf(":") === i ? addr.slice(0, i) : addr;
  }
  get tls() {
    return this.raw.tls();
  }
  get client() {
    return this.raw.client();
  }
  get device() {
    return this.raw.device();
  }
  credentials() {
    return new Credentials(this.raw.credentials());
  }
}

/** The identity earlier plugins established. */
class Identity {
  constructor(raw) {
    this.raw = raw;
  }
  get subject() {
    return (this._subject ??= this.raw.subject());
  }
  get groups() {
    return this.raw.groups();
  }
  inGroup(group) {
    return this.raw.inGroup(group);
  }
  attribute(key) {
    return this.raw.attribute(key);
  }
  get attributes() {
    return Object.fromEntries(this.raw.attributes());
  }
  get roles() {
    return this.raw.roles();
  }
}

/**
 * The `plugin` export for `policy`: `configure(config)` gets the operator's table as an object
 * (a thrown error rejects it, its message shown to the operator); `authenticate(request,
 * identity)` decides, `identity` being `undefined` until an earlier plugin established one.
 */
export function definePlugin(policy) {
  let configured = false;
  return {
    configure(config) {
      try {
        policy.configure?.call(policy, JSON.parse(config));
        configured = true;
      } catch (e) {
        throw String(e?.message ?? e);
      }
    },
    authenticate(request, soFar) {
      if (!configured) return deny("unavailable", "plugin-not-configured", "authenticate before configure");
      return policy.authenticate.call(policy, new Request(request), soFar ? new Identity(soFar) : undefined);
    },
  };
}
