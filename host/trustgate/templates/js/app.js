// {{name}}: lets an identity through if its namespace matches one of `namespaces`.
import { definePlugin, permit, deny, abstain, glob, ConfigError } from "trustgate-plugin";

export const plugin = definePlugin({
  // What every call reads, handed over with the call itself. Anything else is still
  // readable (`identity.subject`, `request.role`, ...), at the cost of one more call.
  wants: { attributes: ["namespace"] },

  configure(config) {
    // A key of the configuration this never reads is an error (a typo would be ignored).
    if (!Array.isArray(config.namespaces) || config.namespaces.length === 0) {
      throw new ConfigError("namespaces", "list at least one namespace glob");
    }
    this.namespaces = config.namespaces;
  },

  authenticate(request, identity) {
    if (!identity) return abstain(); // nobody established yet: no opinion
    const namespace = identity.attribute("namespace") ?? "";
    if (this.namespaces.some((p) => glob(p, namespace))) return permit();
    return deny("forbidden", "namespace-not-allowed", `namespace ${namespace} is not listed`);
  },
});
