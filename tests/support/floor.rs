//! The floor of a plugin call, measured in the same process and on the same engine settings as
//! the runtime (`Runtime::engine`): a trivial component (`tests/guests/floor`) with one host
//! resource and three methods, called the way the runtime calls plugins (`call_async`, a store
//! per instance reused across calls, WASI linked). What the bench binary reports next to the
//! project's figures, so the ratio to the floor speaks for itself.

#![allow(clippy::expect_used, missing_docs)] // a benchmark fixture; generated bindings

use std::time::Instant;

use wasmtime::component::{Component, Linker, Resource, ResourceTable};
use wasmtime::{Engine, Store};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

mod bindings {
    wasmtime::component::bindgen!({
        path: "guests/floor/wit",
        world: "floor",
        imports: {
            "trustgate-bench:floor/host.fetch-async": async | trappable,
            default: trappable,
        },
        exports: { default: async },
        with: { "trustgate-bench:floor/host.thing": super::Thing },
    });
}

use bindings::trustgate_bench::floor::host::{self as h, Bag};

/// The host resource behind `thing`.
pub struct Thing {
    name: String,
    value: String,
}

/// Store state of the floor component: a resource table and an empty WASI context.
pub struct FloorState {
    table: ResourceTable,
    wasi: WasiCtx,
}

impl WasiView for FloorState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl h::Host for FloorState {
    fn fetch(&mut self, n: u32) -> wasmtime::Result<Vec<String>> {
        Ok((0..n).map(|i| format!("value-{i}")).collect())
    }

    fn fetch_bag(&mut self) -> wasmtime::Result<Bag> {
        Ok(bag())
    }

    async fn fetch_async(&mut self) -> wasmtime::Result<bool> {
        Ok(true)
    }
}

impl h::HostThing for FloorState {
    fn flag(&mut self, t: Resource<Thing>) -> wasmtime::Result<bool> {
        Ok(!self.table.get(&t)?.name.is_empty())
    }

    fn name(&mut self, t: Resource<Thing>) -> wasmtime::Result<String> {
        Ok(self.table.get(&t)?.name.clone())
    }

    fn lookup(&mut self, t: Resource<Thing>, key: String) -> wasmtime::Result<Option<String>> {
        let t = self.table.get(&t)?;
        Ok((key == "key").then(|| t.value.clone()))
    }

    fn drop(&mut self, t: Resource<Thing>) -> wasmtime::Result<()> {
        self.table.delete(t)?;
        Ok(())
    }
}

/// A record of 12 short strings, about what a Kubernetes identity carries.
pub fn bag() -> Bag {
    Bag {
        a: "system:serviceaccount:workers:runner".into(),
        b: "k8s-sa-trust".into(),
        c: "worker".into(),
        d: vec![
            "system:serviceaccounts".into(),
            "system:serviceaccounts:workers".into(),
            "system:authenticated".into(),
        ],
        e: vec![
            ("namespace".into(), "workers".into()),
            ("service-account".into(), "runner".into()),
            ("pod-name".into(), "runner-7d9f".into()),
        ],
    }
}

/// One instance of the floor component, ready to call.
pub struct Floor {
    store: Store<FloorState>,
    floor: bindings::Floor,
}

/// What each floor export is measured doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// An export that does nothing.
    Noop,
    /// Lends one resource.
    Lend,
    /// Lends one resource, three method calls, a variant with a string back: the floor of a
    /// plugin call.
    Three,
    /// A record of 12 strings as argument.
    Take,
    /// `n` strings returned.
    Give(u32),
    /// `n` small allocations in the guest.
    Churn(u32),
    /// A host call returning `n` strings.
    Fetch(u32),
    /// A host call returning a record of 12 strings.
    FetchRecord,
    /// An asynchronous host call completing at once.
    Async,
}

impl Floor {
    /// Compiles and instantiates the floor component on `engine`.
    pub async fn new(engine: &Engine, path: &str) -> Self {
        let mut linker: Linker<FloorState> = Linker::new(engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker).expect("wasi");
        bindings::Floor::add_to_linker::<_, wasmtime::component::HasSelf<_>>(&mut linker, |s| s)
            .expect("floor imports");
        let component = Component::from_file(engine, path).expect("floor component");
        let mut store = Store::new(
            engine,
            FloorState {
                table: ResourceTable::new(),
                wasi: WasiCtx::builder().build(),
            },
        );
        // The same fences as a plugin store: epoch deadline far away (never reached here).
        store.set_epoch_deadline(u64::MAX / 2);
        let floor = bindings::Floor::instantiate_async(&mut store, &component, &linker)
            .await
            .expect("instantiate floor");
        Self { store, floor }
    }

    /// One call of `op`.
    pub async fn call(&mut self, op: Op) {
        let run = self.floor.trustgate_bench_floor_run();
        let s = &mut self.store;
        match op {
            Op::Noop => run.call_noop(s).await.expect("noop"),
            Op::Lend | Op::Three => {
                let thing = s
                    .data_mut()
                    .table
                    .push(Thing {
                        name: "subject".into(),
                        value: "value".into(),
                    })
                    .expect("push");
                let borrow = Resource::new_borrow(thing.rep());
                if op == Op::Lend {
                    run.call_lend(&mut *s, borrow).await.expect("lend");
                } else {
                    let r = run.call_three(&mut *s, borrow).await.expect("three");
                    assert_eq!(r.as_deref(), Ok("subject"));
                }
                s.data_mut().table.delete(thing).expect("delete");
            }
            Op::Take => run.call_take(s, &bag()).await.expect("take"),
            Op::Give(n) => {
                let v = run.call_give(s, n).await.expect("give");
                assert_eq!(v.len(), n as usize);
            }
            Op::Churn(n) => run.call_churn(s, n).await.expect("churn"),
            Op::Fetch(n) => run.call_fetch_n(s, n).await.expect("fetch"),
            Op::FetchRecord => run.call_fetch_record(s).await.expect("fetch record"),
            Op::Async => run.call_async_one(s).await.expect("async"),
        }
    }

    /// Median ns per call of `op` over `batches` batches of `batch` calls.
    pub async fn median_ns(&mut self, op: Op, batches: usize, batch: usize) -> f64 {
        for _ in 0..batch {
            self.call(op).await;
        }
        let mut per = Vec::with_capacity(batches);
        for _ in 0..batches {
            let started = Instant::now();
            for _ in 0..batch {
                self.call(op).await;
            }
            per.push(started.elapsed().as_nanos() as f64 / batch as f64);
        }
        per.sort_by(|a, b| a.total_cmp(b));
        per[per.len() / 2]
    }
}
