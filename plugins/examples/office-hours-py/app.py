"""Example policy: peers with an identity may connect only within office hours (UTC).

Configuration: ``from_hour`` and ``to_hour`` (0..=23, inclusive; a window may wrap midnight).
"""

import trustgate_plugin as tg


class OfficeHours:
    def __init__(self, config: tg.Config):
        self.start = config.int("from_hour", 0, 23)
        self.end = config.int("to_hour", 0, 23)

    def within(self, hour: int) -> bool:
        if self.start <= self.end:
            return self.start <= hour <= self.end
        return hour >= self.start or hour <= self.end

    def authenticate(self, request: tg.Request, identity: tg.Identity | None) -> tg.Decision:
        if identity is None:
            return tg.abstain()  # nobody to let through yet; pairing stays possible
        hour = tg.now_ms() // 3_600_000 % 24
        if self.within(hour):
            return tg.permit()
        return tg.deny("forbidden", "outside-office-hours", f"hour {hour} UTC is outside {self.start}..{self.end}")


Plugin = tg.export(OfficeHours)
