"""{{name}}: lets an identity through if its namespace matches one of `namespaces`."""

import trustgate_plugin as tg


class Policy:
    def __init__(self, config: dict):
        self.namespaces = config.get("namespaces") or []
        if not self.namespaces:
            raise ValueError("namespaces: list at least one namespace glob")

    def authenticate(self, request: tg.Request, identity: tg.Identity | None) -> tg.Decision:
        if identity is None:
            return tg.abstain()  # nobody established yet: no opinion
        namespace = identity.attribute("namespace") or ""
        if any(tg.glob(p, namespace) for p in self.namespaces):
            return tg.permit()
        return tg.deny("forbidden", "namespace-not-allowed", f"namespace {namespace!r} is not listed")


Plugin = tg.export(Policy)
