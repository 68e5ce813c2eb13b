//! Test guest that implements the plugin export but imports an interface the gateway does not
//! provide (`secrets`); loading must fail naming that import.

#![allow(unsafe_code)]

wit_bindgen::generate!({
    inline: "
        package trustgate:auth@0.1.0;
        interface types {
            record credentials { method: string, token: option<string>, device-token: option<string> }
            record device { id: string, public-key: string }
            record peer { remote-addr: string, tls: bool, client-id: string, client-version: string, platform: option<string>, conn-id: string }
            record request { credentials: credentials, device: option<device>, peer: peer, role: string, scopes: list<string> }
            record identity { subject: string, method: string, groups: list<string>, attributes: list<tuple<string, string>>, roles: list<string>, scopes: list<string>, expires-at-ms: option<u64>, skip-pairing: bool }
            enum deny-code { unauthenticated, forbidden, unavailable, rate-limited }
            record denial { code: deny-code, reason: string, message: string, retry-after-ms: option<u32> }
            variant decision { allow(identity), deny(denial), abstain }
        }
        interface secrets { get: func(name: string) -> string; }
        interface plugin {
            use types.{request, identity, decision};
            configure: func(config: string) -> result<_, string>;
            authenticate: func(request: request, so-far: option<identity>) -> decision;
        }
        world auth-plugin {
            import secrets;
            export plugin;
        }
    ",
    world: "auth-plugin",
});

use exports::trustgate::auth::plugin::Guest;
use trustgate::auth::types::{Decision, Identity, Request};

struct G;
impl Guest for G {
    fn configure(_: String) -> Result<(), String> {
        Ok(())
    }
    fn authenticate(_: Request, _: Option<Identity>) -> Decision {
        let _ = trustgate::auth::secrets::get("db");
        Decision::Abstain
    }
}
export!(G);
