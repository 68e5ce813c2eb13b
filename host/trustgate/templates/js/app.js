// {{name}}: lets an identity through if its namespace matches one of `namespaces`.
import { definePlugin, permit, deny, abstain, glob } from "trustgate-plugin";

export const plugin = definePlugin({
  configure(config) {
    if (!Array.isArray(config.namespaces) || config.namespaces.length === 0) {
      throw new Error("namespaces: list at least one namespace glob");
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
