// The floor of a JavaScript policy: the least a call costs in the engine inside the sandbox.
import { definePlugin, permit } from "trustgate-plugin";

export const plugin = definePlugin({
  authenticate() {
    return permit();
  },
});
