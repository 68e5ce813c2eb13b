// Test policy with a mistake on a known line: `authenticate` throws on line 13.
import { definePlugin, permit, abstain, ConfigError } from "trustgate-plugin";

export const plugin = definePlugin({
  configure(config) {
    if (typeof config.limit !== "number" || config.limit > 5) {
      throw new ConfigError("limit", "must be a number, at most 5");
    }
  },

  authenticate(request, identity) {
    if (!identity) return abstain();
    throw new Error(`no rule for role ${request.role}`);
    return permit();
  },
});
