//! Test guest that is a valid component but exports something else entirely.

#![allow(unsafe_code)]

wit_bindgen::generate!({
    inline: "
        package acme:greeter;
        interface greet { hello: func() -> string; }
        world greeter { export greet; }
    ",
    world: "greeter",
});

struct G;
impl exports::acme::greeter::greet::Guest for G {
    fn hello() -> String {
        "hi".into()
    }
}
export!(G);
