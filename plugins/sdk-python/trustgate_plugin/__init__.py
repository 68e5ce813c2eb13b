"""Write trustgate auth plugins in Python.

A plugin is a class with ``__init__(config)`` and ``authenticate(request, identity)``; the
``export`` function turns it into the component's ``plugin`` export, and componentize-py
turns the module into a WebAssembly component implementing ``trustgate:auth@0.3.0``::

    import trustgate_plugin as tg

    class OfficeHours:
        # What every call reads, handed over with the call itself (anything else is still
        # readable, at the cost of one more call into the gateway).
        wants = tg.Wants(so_far=["subject"])

        def __init__(self, config: tg.Config):
            self.hours = range(config.int("from_hour", 0, 23), config.int("to_hour", 0, 23) + 1)

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

Mistakes surface where they are made:

- ``raise tg.ConfigError("from_hour", "must be 0..23")`` in ``__init__`` names the key in the
  gateway's error (``auth.plugins[0].config.from_hour: must be 0..23``); any other exception
  there is reported with its file and line.
- A key of the configuration the policy never reads is an error (a typo would otherwise be
  ignored); a policy that reads keys dynamically sets ``allow_unknown_config_keys = True``.
- An exception in ``authenticate`` fails the plugin (``PLUGIN_FAILED``) with the policy's own
  file, line and message in ``plugin test``, ``auth explain``, the gateway's log and the audit
  trace.

Credentials are opaque: ``request.token_review(audiences)`` asks the gateway to verify the
token; reading ``request.credentials().token()`` needs the operator's ``credentials = "read"``
grant.
"""

from __future__ import annotations

import ipaddress
import json
import fnmatch
import os
import sys
import traceback
from typing import Any, Callable, Optional

from componentize_py_types import Err, Ok
from wit_world.exports import Plugin as _PluginProtocol
from wit_world.imports import host as _host
from wit_world.imports import types as _t

__all__ = [
    "Request",
    "Identity",
    "Credentials",
    "Review",
    "Decision",
    "Wants",
    "Config",
    "ConfigError",
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


class ConfigError(Exception):
    """Rejects the configuration naming the key at fault: ``ConfigError("rules[1].cidr", "not a
    network")`` reads ``auth.plugins[N].config.rules[1].cidr: not a network`` to the operator."""

    def __init__(self, key: str, message: str):
        super().__init__(f"{key}: {message}")
        self.key = key
        self.message = message


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


# === What a plugin declares ===

_REQUEST_FIELDS = {
    "role": _t.RequestFields.ROLE,
    "scopes": _t.RequestFields.SCOPES,
    "method": _t.RequestFields.METHOD,
    "remote_addr": _t.RequestFields.REMOTE,
    "tls": _t.RequestFields.TLS,
    "client": _t.RequestFields.CLIENT,
    "conn_id": _t.RequestFields.CONN_ID,
    "device": _t.RequestFields.DEVICE,
    "presented": _t.RequestFields.PRESENTED,
}

_IDENTITY_FIELDS = {
    "subject": _t.IdentityFields.SUBJECT,
    "method": _t.IdentityFields.METHOD,
    "groups": _t.IdentityFields.GROUPS,
    "attributes": _t.IdentityFields.ATTRIBUTES,
    "roles": _t.IdentityFields.ROLES,
    "scopes": _t.IdentityFields.SCOPES,
    "expires_at_ms": _t.IdentityFields.EXPIRES_AT_MS,
    "skip_pairing": _t.IdentityFields.SKIP_PAIRING,
}


def _all(table: dict, empty: Any) -> Any:
    out = empty
    for f in table.values():
        out |= f
    return out


_ALL_REQUEST = _all(_REQUEST_FIELDS, _t.RequestFields(0))
_ALL_IDENTITY = _all(_IDENTITY_FIELDS, _t.IdentityFields(0))


def _flags(names: list[str], table: dict, empty: Any, what: str) -> Any:
    out = empty
    for n in names:
        if n not in table:
            raise ValueError(f"wants: unknown {what} fact `{n}` (one of {', '.join(table)})")
        out |= table[n]
    return out


class Wants:
    """What every call of the plugin reads, handed over with the call (declare it as the class
    attribute ``wants``). ``request`` names request facts (``role``, ``scopes``, ``method``,
    ``remote_addr``, ``tls``, ``client``, ``conn_id``, ``device``, ``presented``); ``so_far``
    facts of the identity so far (``subject``, ``method``, ``groups``, ``attributes``,
    ``roles``, ``scopes``, ``expires_at_ms``, ``skip_pairing``); ``attributes`` single
    attributes by key; ``methods`` the auth methods the plugin decides on (others never reach
    it). Anything not declared is still readable: the first such read fetches all of them at
    once."""

    def __init__(
        self,
        request: Optional[list[str]] = None,
        so_far: Optional[list[str]] = None,
        attributes: Optional[list[str]] = None,
        methods: Optional[list[str]] = None,
    ):
        self.request = list(request or [])
        self.so_far = list(so_far or [])
        self.attributes = list(attributes or [])
        self.methods = list(methods or [])

    def _raw(self) -> Any:
        return _t.Wants(
            methods=self.methods,
            request=_flags(self.request, _REQUEST_FIELDS, _t.RequestFields(0), "request"),
            so_far=_flags(self.so_far, _IDENTITY_FIELDS, _t.IdentityFields(0), "identity"),
            attributes=self.attributes,
            verification=None,
            template=None,
        )


# === The configuration, with the keys read counted ===


class Config(dict):
    """The operator's configuration table: a ``dict`` that remembers which keys the policy
    read, so a key it never reads (a typo) is reported. Nested tables are ``Config`` too."""

    def __init__(self, data: dict, path: str = ""):
        super().__init__(data)
        self._path = path
        self._read: set[str] = set()
        self._all_read = False

    def _child(self, key: str, value: Any) -> Any:
        if isinstance(value, dict) and not isinstance(value, Config):
            value = Config(value, f"{self._path}{key}")
            dict.__setitem__(self, key, value)
        elif isinstance(value, list):
            for i, v in enumerate(value):
                if isinstance(v, dict) and not isinstance(v, Config):
                    value[i] = Config(v, f"{self._path}{key}[{i}].")
        return value

    def __getitem__(self, key: str) -> Any:
        self._read.add(key)
        return self._child(key, dict.__getitem__(self, key))

    def get(self, key: str, default: Any = None) -> Any:
        self._read.add(key)
        if key in self:
            return self._child(key, dict.__getitem__(self, key))
        return default

    def __contains__(self, key: object) -> bool:
        if isinstance(key, str):
            self._read.add(key)
        return dict.__contains__(self, key)

    def items(self):  # type: ignore[override]
        self._all_read = True
        return [(k, self._child(k, v)) for k, v in dict.items(self)]

    def values(self):  # type: ignore[override]
        return [v for _, v in self.items()]

    def keys(self):  # type: ignore[override]
        self._all_read = True
        return dict.keys(self)

    def __iter__(self):
        self._all_read = True
        return dict.__iter__(self)

    def int(self, key: str, low: Optional[int] = None, high: Optional[int] = None) -> int:
        """The integer at ``key`` (required), within ``low..=high`` if given."""
        if key not in self:
            raise ConfigError(f"{self._path}{key}", "is required")
        v = self[key]
        if not isinstance(v, int) or isinstance(v, bool):
            raise ConfigError(f"{self._path}{key}", f"must be an integer, got {type(v).__name__}")
        if (low is not None and v < low) or (high is not None and v > high):
            raise ConfigError(f"{self._path}{key}", f"must be between {low} and {high}, got {v}")
        return v

    def str_list(self, key: str) -> list[str]:
        """The list of strings at ``key`` (required, not empty)."""
        v = self.get(key)
        if not isinstance(v, list) or not v or not all(isinstance(x, str) for x in v):
            raise ConfigError(f"{self._path}{key}", "must be a non-empty list of strings")
        return v

    def unread(self) -> Optional[str]:
        """The first key (with its path) the policy never read, if any."""
        if self._all_read:
            return None
        for k, v in dict.items(self):
            if k not in self._read:
                return f"{self._path}{k}"
            for child in v if isinstance(v, list) else [v]:
                if isinstance(child, Config):
                    deeper = child.unread()
                    if deeper:
                        return deeper
        return None


# === Where in the policy's own source ===

_SDK_DIR = os.path.dirname(os.path.abspath(__file__))


def _where(tb: Any) -> str:
    """``app.py:14`` for the innermost frame of a traceback outside this SDK."""
    frames = [f for f in traceback.extract_tb(tb) if not os.path.abspath(f.filename).startswith(_SDK_DIR)]
    if not frames:
        return "?"
    f = frames[-1]
    return f"{os.path.basename(f.filename)}:{f.lineno}"


def _describe(e: BaseException) -> str:
    """``app.py:14: AttributeError: message``."""
    return f"{_where(e.__traceback__)}: {type(e).__name__}: {e}"


# === The request and the identity ===


def _ip_text(a: Any) -> str:
    ip = a.ip
    if isinstance(ip, _t.IpAddress_Ipv4):
        return f"{ipaddress.IPv4Address(bytes(ip.value))}:{a.port}"
    packed = b"".join(int(g).to_bytes(2, "big") for g in ip.value)
    return f"[{ipaddress.IPv6Address(packed)}]:{a.port}"


def _request_facts(facts: list, into: dict) -> None:
    for f in facts:
        if isinstance(f, _t.Fact_Role):
            into["role"] = "operator" if f.value == _t.Role.OPERATOR else "worker"
        elif isinstance(f, _t.Fact_Scopes):
            into["scopes"] = f.value
        elif isinstance(f, _t.Fact_Method):
            into["method"] = f.value
        elif isinstance(f, _t.Fact_Remote):
            into["remote_addr"] = _ip_text(f.value)
        elif isinstance(f, _t.Fact_Tls):
            into["tls"] = f.value
        elif isinstance(f, _t.Fact_Client):
            into["client"] = f.value
        elif isinstance(f, _t.Fact_ConnId):
            into["conn_id"] = f.value
        elif isinstance(f, _t.Fact_Device):
            into["device"] = f.value
        elif isinstance(f, _t.Fact_Presented):
            into["presented"] = f.value


def _identity_facts(facts: list, into: dict) -> bool:
    """Puts the identity's facts in ``into``; whether there is an identity."""
    found = False
    for f in facts:
        if isinstance(f, _t.Fact_Identity):
            found = True
        elif isinstance(f, _t.Fact_Subject):
            into["subject"] = f.value
        elif isinstance(f, _t.Fact_IdentityMethod):
            into["method"] = f.value
        elif isinstance(f, _t.Fact_Groups):
            into["groups"] = f.value
        elif isinstance(f, _t.Fact_Attribute):
            into.setdefault("_attributes", {})[f.value[0]] = f.value[1]
        elif isinstance(f, _t.Fact_Roles):
            into["roles"] = f.value
        elif isinstance(f, _t.Fact_IdentityScopes):
            into["scopes"] = f.value
        elif isinstance(f, _t.Fact_ExpiresAtMs):
            into["expires_at_ms"] = f.value
        elif isinstance(f, _t.Fact_SkipPairing):
            into["skip_pairing"] = f.value
    return found


class Review:
    """What a verification found."""

    def __init__(self, raw: Any):
        self._raw = raw

    def authenticated(self) -> bool:
        return self._raw.authenticated

    def audience_matched(self) -> bool:
        """Whether the review names one of the audiences asked for (without one, the authority
        ignored audiences: do not trust it)."""
        return self._raw.audience_matched

    def error(self) -> Optional[str]:
        return self._raw.error

    def username(self) -> str:
        return self._raw.username

    def uid(self) -> Optional[str]:
        return self._raw.uid

    def groups(self) -> list[str]:
        return self._raw.groups or []

    def audiences(self) -> list[str]:
        return self._raw.audiences or []


class Credentials:
    """The credentials the peer presented, as an opaque handle."""

    def __init__(self, raw: Any):
        self._raw = raw

    def method(self) -> str:
        return self._raw.method()

    def token(self) -> str:
        """The bearer token; raises ``SecretError`` without the operator's grant."""
        try:
            return self._raw.token()
        except Err as e:
            raise SecretError("not-granted" if e.value == _t.SecretError.NOT_GRANTED else "absent")


def _spec(audiences: list[str]) -> Any:
    return _t.ReviewSpec(
        audiences=list(audiences),
        extra=[],
        fields=_t.ReviewFields.UID | _t.ReviewFields.GROUPS | _t.ReviewFields.AUDIENCES,
    )


class Request:
    """The request being decided on. Declared facts came with the call; the first read of
    any other fetches all of them at once."""

    def __init__(self, facts: list, declared: list[str]):
        self._f: dict = {}
        _request_facts(facts, self._f)
        self._declared = set(declared)
        self._fetched = False

    def _get(self, name: str) -> Any:
        if name not in self._f and name not in self._declared and not self._fetched:
            self._fetched = True
            _request_facts(_host.read_request(_ALL_REQUEST), self._f)
        return self._f.get(name)

    @property
    def role(self) -> str:
        return self._get("role") or ""

    @property
    def method(self) -> str:
        return self._get("method") or ""

    @property
    def scopes(self) -> list[str]:
        return self._get("scopes") or []

    @property
    def remote_addr(self) -> str:
        return self._get("remote_addr") or ""

    @property
    def ip(self) -> Optional[str]:
        """The peer's IP address (without the port)."""
        addr = self.remote_addr
        host = addr.rsplit(":", 1)[0] if addr.count(":") == 1 or addr.startswith("[") else addr
        return host.strip("[]") or None

    @property
    def tls(self) -> bool:
        return bool(self._get("tls"))

    @property
    def client(self) -> Any:
        """``id``, ``version``, ``platform``, ``instance_id`` as the peer reports them."""
        return self._get("client")

    @property
    def conn_id(self) -> str:
        return self._get("conn_id") or ""

    @property
    def device(self) -> Any:
        """The verified device (``id``, ``public_key``) or ``None``."""
        return self._get("device")

    @property
    def has_token(self) -> bool:
        p = self._get("presented")
        return bool(p is not None and _t.Presented.TOKEN in p)

    def credentials(self) -> Credentials:
        return Credentials(_host.presented_credentials())

    def token_review(self, audiences: list[str]) -> Review:
        """A Kubernetes TokenReview of the bearer token (raises ``ReviewError``)."""
        try:
            return Review(_host.token_review(_spec(audiences)))
        except Err as e:
            raise _review_error(e.value)

    def verify_jwt(self, audiences: list[str]) -> Review:
        """Local verification against the cluster's OIDC keys (raises ``ReviewError``)."""
        try:
            return Review(_host.verify_jwt(_spec(audiences)))
        except Err as e:
            raise _review_error(e.value)


class Identity:
    """The identity earlier plugins established. Declared facts came with the call; the
    first read of any other fetches all of them at once."""

    def __init__(self, facts: dict, declared: list[str], keys: list[str]):
        self._f = facts
        self._declared = set(declared)
        self._keys = set(keys)
        self._fetched = False

    def _fetch(self) -> None:
        if not self._fetched:
            self._fetched = True
            self._f.pop("_attributes", None)
            _identity_facts(_host.read_so_far(_ALL_IDENTITY, []), self._f)
            self._f.setdefault("_attributes", {})
            self._declared.add("attributes")

    def _get(self, name: str) -> Any:
        if name not in self._f and name not in self._declared:
            self._fetch()
        return self._f.get(name)

    @property
    def subject(self) -> str:
        return self._get("subject") or ""

    @property
    def method(self) -> str:
        return self._get("method") or ""

    @property
    def groups(self) -> list[str]:
        return self._get("groups") or []

    def in_group(self, group: str) -> bool:
        return group in self.groups

    def attribute(self, key: str) -> Optional[str]:
        if key not in self._keys and "attributes" not in self._declared:
            self._fetch()
        return self._f.get("_attributes", {}).get(key)

    @property
    def attributes(self) -> dict[str, str]:
        if "attributes" not in self._declared:
            self._fetch()
        return dict(self._f.get("_attributes", {}))

    @property
    def roles(self) -> list[str]:
        return self._get("roles") or []

    @property
    def scopes(self) -> list[str]:
        return self._get("scopes") or []


# === Decisions ===


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


def export(policy_class: Callable[[Config], Any]) -> type:
    """The ``Plugin`` export for ``policy_class``: built from the operator's configuration in
    ``configure``, asked ``authenticate(request, identity)`` for every request. A
    ``ConfigError`` in ``__init__`` names its key; any other exception there, and a key the
    policy never read, reject the configuration too. An exception in ``authenticate`` fails
    the plugin with the policy's file, line and message."""

    wants = getattr(policy_class, "wants", None) or Wants()
    lenient = bool(getattr(policy_class, "allow_unknown_config_keys", False))

    class _Export(_PluginProtocol):
        _policy: Any = None

        def configure(self, config: str) -> Any:
            table = Config(json.loads(config))
            try:
                policy = policy_class(table)
            except ConfigError as e:
                raise Err(f"{e.key}: {e.message}")
            except Exception as e:  # shown to the operator, where it happened
                raise Err(f"the policy's __init__ failed at {_describe(e)}")
            unread = None if lenient else table.unread()
            if unread:
                raise Err(
                    f"{unread}: unknown key: the policy does not read it (a typo? A policy "
                    "reading keys it does not know in advance sets allow_unknown_config_keys)"
                )
            try:
                raw = wants._raw()
            except ValueError as e:
                raise Err(str(e))
            _Export._policy = policy
            return raw

        def authenticate(self, facts: list) -> Decision:
            if _Export._policy is None:
                return deny("unavailable", "plugin-not-configured", "authenticate before configure")
            try:
                request = Request(facts, wants.request)
                found: dict = {}
                identity = (
                    Identity(found, wants.so_far, wants.attributes)
                    if _identity_facts(facts, found)
                    else None
                )
                return _Export._policy.authenticate(request, identity)
            except Exception as e:
                return _t.Decision_Fail(_describe(e))

    return _Export
