//! The FlashJob benchmark: a small run by default, 1,000 UUIDs with `--ignored`.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_flashjob_completes() {
    let report = otafleet_k8s::bench_flashjob(50, 20).await.expect("bench runs");
    println!("{report}");
    assert!(report.reconciles > 0 && report.api_requests > 50);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: cargo test -p otafleet-k8s --release --test bench -- --ignored --nocapture"]
async fn thousand_uuids() {
    for max in [20, 100] {
        let report = otafleet_k8s::bench_flashjob(1000, max).await.expect("bench runs");
        println!("{report}");
    }
}
