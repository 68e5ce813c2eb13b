"""Write trustgate auth plugins in Python.

A plugin is a class with ``configure(config)`` and ``authenticate(request, identity)``; the
``export`` function turns it into the component's ``plugin`` export, and componentize-py
turns the module into a WebAssembly component implementing ``trustgate:auth@0.2.0``::

    import trustgate_plugin as tg

    class OfficeHours:
        def __init__(self, config: dict):
            self.hours = range(config["from_hour"], config["to_hour"] + 1)

        def authenticate(self, request: tg.Request, identity: tg.Identity | None) -> tg.Decision:
            if identity is None:
                return tg.abstain()
            hour = tg.now_ms() // 3_600_000 % 24
            if hour in self.hours:
                return tg.permit()
            return tg.deny("forbidden", "outside-hours", f"hour {hour} is outside the window")

    Plugin = tg.export(OfficeHours)

Build (``componentize-py`` from PyPI, pinned in ``requirements.txt``)::

    componentize-py -d wit -w auth-plugin componentize -p plugins/sdk-python -p . app -o app.wasm

Credentials are opaque: hand them to ``request.credentials().review(audiences)``; reading
``token()`` needs the operator's ``credentials = "read"`` grant.
"""

from __future__ import annotations

import ipaddress
import json
import fnmatch
from typing import Any, Callable, Optional

from componentize_py_types import Err
from wit_world.exports import Plugin as _PluginProtocol
from wit_world.imports import host as _host
from wit_world.imports import types as _t

__all__ = [
    "Request",
    "Identity",
    "Credentials",
    "Review",
    "Decision",
    "ReviewError",
    "SecretError",
    "allow",
    "permit",
    "deny",
    "abstain",
    "export",
    "now_ms",
    "log",
    "glob",
    "in_cidr",
]

Decision = _t.Decision


class ReviewError(Exception):
    """The gateway could not complete a verification (says nothing about the token).

    ``kind`` is ``not-configured``, ``unavailable``, ``forbidden`` or ``failed``."""

    def __init__(self, kind: str, message: str):
        super().__init__(f"{kind}: {message}")
        self.kind = kind
        self.message = message


class SecretError(Exception):
    """A credential accessor gave no value: ``not-granted`` or ``absent``."""

    def __init__(self, kind: str):
        super().__init__(kind)
        self.kind = kind


def _review_error(e: Any) -> ReviewError:
    kinds = {
        "ReviewError_NotConfigured": "not-configured",
        "ReviewError_Unavailable": "unavailable",
        "ReviewError_Forbidden": "forbidden",
        "ReviewError_Failed": "failed",
    }
    return ReviewError(kinds.get(type(e).__name__, "failed"), str(getattr(e, "value", e)))


class Review:
    """What a verification found."""

    def __init__(self, raw: Any):
        self._raw = raw

    def authenticated(self) -> bool:
        return self._raw.authenticated()

    def error(self) -> Optional[str]:
        return self._raw.error()

    def username(self) -> str:
        return self._raw.username()

    def uid(self) -> str:
        return self._raw.uid()

    def groups(self) -> list[str]:
        return self._raw.groups()

    def audiences(self) -> list[str]:
        return self._raw.audiences()

    def extra(self, key: str) -> Optional[list[str]]:
        return self._raw.extra(key)


class Credentials:
    """The credentials the peer presented, as an opaque handle."""

    def __init__(self, raw: Any):
        self._raw = raw

    def method(self) -> str:
        return self._raw.method()

    def has_token(self) -> bool:
        return self._raw.has_token()

    def token(self) -> str:
        """The bearer token; raises ``SecretError`` without the operator's grant."""
        try:
            return self._raw.token()
        except Err as e:
            raise SecretError("not-granted" if e.value == _t.SecretError.NOT_GRANTED else "absent")

    def review(self, audiences: list[str]) -> Review:
        """A Kubernetes TokenReview of the bearer token (raises ``ReviewError``)."""
        try:
            return Review(_host.token_review(self._raw, audiences))
        except Err as e:
            raise _review_error(e.value)

    def verify_jwt(self, audiences: list[str]) -> Review:
        """Local verification against the cluster's OIDC keys (raises ``ReviewError``)."""
        try:
            return Review(_host.verify_jwt(self._raw, audiences))
        except Err as e:
            raise _review_error(e.value)


class Request:
    """The request being decided on; each fact is fetched when first read."""

    def __init__(self, raw: Any):
        self._raw = raw
        self._role: Optional[str] = None
        self._addr: Optional[str] = None

    @property
    def role(self) -> str:
        if self._role is None:
            self._role = self._raw.role()
        return self._role

    @property
    def method(self) -> str:
        return self._raw.method()

    @property
    def scopes(self) -> list[str]:
        return self._raw.scopes()

    @property
    def remote_addr(self) -> str:
        if self._addr is None:
            self._addr = self._raw.remote_addr()
        return self._addr

    @property
    def ip(self) -> Optional[str]:
        """The peer's IP address (without the port)."""
        addr = self.remote_addr
        host = addr.rsplit(":", 1)[0] if addr.count(":") == 1 or addr.startswith("[") else addr
        return host.strip("[]") or None

    @property
    def tls(self) -> bool:
        return self._raw.tls()

    @property
    def client(self) -> Any:
        """``id``, ``version``, ``platform``, ``instance_id`` as the peer reports them."""
        return self._raw.client()

    @property
    def device(self) -> Any:
        """The verified device (``id``, ``public_key``) or ``None``."""
        return self._raw.device()

    def credentials(self) -> Credentials:
        return Credentials(self._raw.credentials())


class Identity:
    """The identity earlier plugins established."""

    def __init__(self, raw: Any):
        self._raw = raw
        self._subject: Optional[str] = None

    @property
    def subject(self) -> str:
        if self._subject is None:
            self._subject = self._raw.subject()
        return self._subject

    @property
    def groups(self) -> list[str]:
        return self._raw.groups()

    def in_group(self, group: str) -> bool:
        return self._raw.in_group(group)

    def attribute(self, key: str) -> Optional[str]:
        return self._raw.attribute(key)

    @property
    def attributes(self) -> dict[str, str]:
        return dict(self._raw.attributes())

    @property
    def roles(self) -> list[str]:
        return self._raw.roles()


def allow(
    subject: str,
    method: str,
    *,
    roles: list[str],
    groups: Optional[list[str]] = None,
    attributes: Optional[dict[str, str]] = None,
    scopes: Optional[list[str]] = None,
    expires_at_ms: Optional[int] = None,
    skip_pairing: bool = False,
) -> Decision:
    """Establishes an identity."""
    return _t.Decision_Allow(
        _t.Established(
            subject=subject,
            method=method,
            groups=list(groups or []),
            attributes=list((attributes or {}).items()),
            roles=list(roles),
            scopes=list(scopes or []),
            expires_at_ms=expires_at_ms,
            skip_pairing=skip_pairing,
        )
    )


def permit(
    *,
    keep_roles: Optional[list[str]] = None,
    keep_scopes: Optional[list[str]] = None,
    add_attributes: Optional[dict[str, str]] = None,
    expires_at_ms: Optional[int] = None,
    veto_skip_pairing: bool = False,
) -> Decision:
    """Lets the identity so far through, narrowed if asked."""
    return _t.Decision_Permit(
        _t.Narrowing(
            roles=keep_roles,
            scopes=keep_scopes,
            attributes=list((add_attributes or {}).items()),
            expires_at_ms=expires_at_ms,
            veto_skip_pairing=veto_skip_pairing,
        )
    )


_CODES = {
    "unauthenticated": _t.DenyCode.UNAUTHENTICATED,
    "forbidden": _t.DenyCode.FORBIDDEN,
    "unavailable": _t.DenyCode.UNAVAILABLE,
    "rate-limited": _t.DenyCode.RATE_LIMITED,
}


def deny(code: str, reason: str, message: str = "", retry_after_ms: Optional[int] = None) -> Decision:
    """Refuses the peer: ``code`` is ``unauthenticated``, ``forbidden``, ``unavailable`` or
    ``rate-limited``; ``reason`` is the stable word the client sees; ``message`` goes to the
    gateway's log only."""
    return _t.Decision_Deny(
        _t.Denial(code=_CODES[code], reason=reason, message=message, retry_after_ms=retry_after_ms)
    )


def abstain() -> Decision:
    """No opinion."""
    return _t.Decision_Abstain()


def now_ms() -> int:
    """The gateway's wall-clock time in Unix milliseconds."""
    return _host.now_ms()


_LEVELS = {
    "trace": _host.LogLevel.TRACE,
    "debug": _host.LogLevel.DEBUG,
    "info": _host.LogLevel.INFO,
    "warn": _host.LogLevel.WARN,
    "error": _host.LogLevel.ERROR,
}


def log(level: str, message: str) -> None:
    """A line in the gateway's log, tagged with this plugin. Never log a token."""
    _host.log(_LEVELS[level], message)


def glob(pattern: str, text: str) -> bool:
    """Shell-style matching (``*``, ``?``)."""
    return fnmatch.fnmatchcase(text, pattern)


def in_cidr(ip: Optional[str], cidr: str) -> bool:
    """Whether ``ip`` (IPv4 or IPv6) is in the network ``cidr`` (``"10.0.0.0/8"``,
    ``"fd00::/8"``); ``False`` for a missing or malformed address or network."""
    if not ip:
        return False
    try:
        return ipaddress.ip_address(ip) in ipaddress.ip_network(cidr, strict=False)
    except ValueError:
        return False


def export(policy_class: Callable[[dict], Any]) -> type:
    """The ``Plugin`` export for ``policy_class``: built from the operator's configuration in
    ``configure``, asked ``authenticate(request, identity)`` for every request. An exception
    in ``__init__`` rejects the configuration with its message; one in ``authenticate`` denies
    (the gateway reports the plugin failed)."""

    class _Export(_PluginProtocol):
        _policy: Any = None

        def configure(self, config: str) -> None:
            try:
                _Export._policy = policy_class(json.loads(config))
            except Exception as e:  # shown to the operator
                raise Err(f"{type(e).__name__}: {e}")

        def authenticate(self, request: Any, so_far: Any) -> Decision:
            if _Export._policy is None:
                return deny("unavailable", "plugin-not-configured", "authenticate before configure")
            identity = Identity(so_far) if so_far is not None else None
            return _Export._policy.authenticate(Request(request), identity)

    return _Export
