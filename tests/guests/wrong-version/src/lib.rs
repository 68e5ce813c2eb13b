//! Test guest built against a future contract version (`trustgate:auth@0.9.0`); the gateway
//! must refuse it naming both versions. The inline WIT is deliberately not `wit/`.

#![allow(unsafe_code)]

wit_bindgen::generate!({
    inline: "
        package trustgate:auth@0.9.0;
        interface plugin {
            configure: func(config: string) -> result<_, string>;
            authenticate-v2: func(request: string) -> bool;
        }
        world auth-plugin { export plugin; }
    ",
    world: "auth-plugin",
});

struct G;
impl exports::trustgate::auth::plugin::Guest for G {
    fn configure(_: String) -> Result<(), String> {
        Ok(())
    }
    fn authenticate_v2(_: String) -> bool {
        true
    }
}
export!(G);
