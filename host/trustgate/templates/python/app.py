"""{{name}}: lets an identity through if its namespace matches one of `namespaces`."""

import trustgate_plugin as tg


class Policy:
    # What every call reads, handed over with the call itself. Anything else is still
    # readable (`identity.subject`, `request.role`, ...), at the cost of one more call.
    wants = tg.Wants(attributes=["namespace"])

    def __init__(self, config: tg.Config):
        # A key of the configuration this never reads is an error (a typo would be ignored).
        self.namespaces = config.str_list("namespaces")

    def authenticate(self, request: tg.Request, identity: tg.Identity | None) -> tg.Decision:
        if identity is None:
            return tg.abstain()  # nobody established yet: no opinion
        namespace = identity.attribute("namespace") or ""
        if any(tg.glob(p, namespace) for p in self.namespaces):
            return tg.permit()
        return tg.deny("forbidden", "namespace-not-allowed", f"namespace {namespace!r} is not listed")


Plugin = tg.export(Policy)
