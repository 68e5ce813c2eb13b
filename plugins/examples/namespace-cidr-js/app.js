// Example policy: an identity may connect if its namespace matches one of `namespaces` (globs)
// and the peer's address is in one of `cidrs`. No identity yet: no opinion.
import { definePlugin, permit, deny, abstain, glob, inCidr } from "trustgate-plugin";

export const plugin = definePlugin({
  configure(config) {
    if (!Array.isArray(config.namespaces) || config.namespaces.length === 0) {
      throw new Error("namespaces: list at least one namespace glob");
    }
    if (!Array.isArray(config.cidrs) || config.cidrs.length === 0) {
      throw new Error("cidrs: list at least one network, e.g. \"10.0.0.0/8\"");
    }
    this.namespaces = config.namespaces;
    this.cidrs = config.cidrs;
  },

  authenticate(request, identity) {
    if (!identity) return abstain();
    const namespace = identity.attribute("namespace") ?? "";
    if (!this.namespaces.some((p) => glob(p, namespace))) {
      return deny("forbidden", "namespace-not-allowed", `namespace ${namespace} is not listed`);
    }
    if (!this.cidrs.some((c) => inCidr(request.ip, c))) {
      return deny("forbidden", "network-not-allowed", `${request.ip} is outside the allowed networks`);
    }
    return permit();
  },
});
