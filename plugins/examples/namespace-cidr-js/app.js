// Example policy: an identity may connect if its namespace matches one of `namespaces` (globs)
// and the peer's address is in one of `cidrs`. No identity yet: no opinion.
import { definePlugin, permit, deny, abstain, globMatcher, cidrMatcher, ConfigError } from "trustgate-plugin";

export const plugin = definePlugin({
  // Read on every call: handed over with the call itself.
  wants: { request: ["remote"], attributes: ["namespace"] },

  configure(config) {
    if (!Array.isArray(config.namespaces) || config.namespaces.length === 0) {
      throw new ConfigError("namespaces", "list at least one namespace glob");
    }
    if (!Array.isArray(config.cidrs) || config.cidrs.length === 0) {
      throw new ConfigError("cidrs", "list at least one network, e.g. \"10.0.0.0/8\"");
    }
    // Compiled once here, not on every connection; a bad network rejects the configuration.
    this.namespace = globMatcher(config.namespaces);
    this.network = cidrMatcher(config.cidrs);
  },

  authenticate(request, identity) {
    if (!identity) return abstain();
    const namespace = identity.attribute("namespace") ?? "";
    if (!this.namespace(namespace)) {
      return deny("forbidden", "namespace-not-allowed", `namespace ${namespace} is not listed`);
    }
    const ip = request.ip;
    if (!this.network(ip)) {
      return deny("forbidden", "network-not-allowed", `${ip} is outside the allowed networks`);
    }
    return permit();
  },
});
