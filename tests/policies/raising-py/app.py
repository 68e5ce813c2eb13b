"""Test policy with mistakes on known lines: ``__init__`` rejects ``limit`` over 5 naming the
key, and ``authenticate`` raises ``AttributeError`` on line 17."""

import trustgate_plugin as tg


class Raising:
    def __init__(self, config: tg.Config):
        self.limit = config.int("limit")
        if self.limit > 5:
            raise tg.ConfigError("limit", "must be at most 5")

    def authenticate(self, request: tg.Request, identity: tg.Identity | None) -> tg.Decision:
        if identity is None:
            return tg.abstain()
        # The mistake under test: a field that does not exist.
        return tg.permit() if request.rol == "worker" else tg.abstain()


Plugin = tg.export(Raising)
