"""The floor of a Python policy: the least a call costs in CPython inside the sandbox."""

import trustgate_plugin as tg


class Empty:
    def __init__(self, config: tg.Config):
        pass

    def authenticate(self, request: tg.Request, identity: tg.Identity | None) -> tg.Decision:
        return tg.permit()


Plugin = tg.export(Empty)
