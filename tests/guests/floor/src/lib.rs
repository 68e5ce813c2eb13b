//! The floor component of the bench binary (`bench -- floor`): each export does only what its
//! name says, so its cost is the runtime's and wasmtime's, not trustgate's contract.

#![allow(unsafe_code)] // generated bindings

wit_bindgen::generate!({ path: "wit", world: "floor" });

use exports::trustgate_bench::floor::run::Guest;
use trustgate_bench::floor::host::{self, Bag, Thing};

struct Floor;

impl Guest for Floor {
    fn noop() {}

    fn lend(_: &Thing) {}

    fn three(t: &Thing) -> Result<String, String> {
        if t.flag() && t.lookup("key").is_some() {
            Ok(t.name())
        } else {
            Err(String::new())
        }
    }

    fn take(facts: Bag) {
        core::hint::black_box(facts);
    }

    fn give(n: u32) -> Vec<String> {
        (0..n).map(|i| format!("value-{i}")).collect()
    }

    fn churn(n: u32) {
        for i in 0..n {
            core::hint::black_box(i.to_string());
        }
    }

    fn fetch_n(n: u32) {
        core::hint::black_box(host::fetch(n));
    }

    fn fetch_record() {
        core::hint::black_box(host::fetch_bag());
    }

    fn async_one() {
        core::hint::black_box(host::fetch_async());
    }
}

export!(Floor);
