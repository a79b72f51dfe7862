use super::collect::scale;
use super::*;

#[test]
fn scale_is_the_inverse_probability_of_a_sample() {
    let rate = 512.0 * 1024.0;
    // A block as large as the rate is picked with probability 1 - 1/e.
    let s = scale(512 * 1024, rate);
    assert!((s - 1.0 / (1.0 - (-1.0f64).exp())).abs() < 1e-9);
    // Huge blocks are always picked; tiny ones stand for many.
    assert!((scale(1 << 40, rate) - 1.0).abs() < 1e-9);
    assert!((scale(64, rate) - rate / 64.0).abs() / (rate / 64.0) < 0.001);
}

#[test]
fn the_live_table_remembers_until_freed_and_the_count_map_guards_frees() {
    // No profiler starts meanwhile (a start clears the table), and blocks
    // still remembered from earlier tests may be freed meanwhile: only
    // this test's entries are counted, by ids no real sample gets.
    let _serial = crate::sampler::tests::serial();
    const FIRST: u32 = 4_000_000_000;
    let ours = || {
        let mut n = 0;
        live::for_each(|id, size| {
            if (FIRST..FIRST + 100).contains(&id) {
                assert_eq!(size, 64);
                n += 1;
            }
        });
        n
    };
    let addrs: Vec<usize> = (0..100).map(|i| 0x7f00_0000_0000 + i * 4096).collect();
    for (i, &a) in addrs.iter().enumerate() {
        assert!(live::remember(a, FIRST + i as u32, 64));
    }
    assert_eq!(ours(), 100);
    // Freeing an address never remembered changes nothing.
    live::forget(0x7f00_0000_0008);
    assert_eq!(ours(), 100);
    for &a in &addrs[..50] {
        live::forget(a);
    }
    assert_eq!(ours(), 50);
    for &a in &addrs[50..] {
        live::forget(a);
    }
    assert_eq!(ours(), 0);
}

/// The lib's tests run with the wrapper installed (inert but for the tests
/// that switch it on).
#[global_allocator]
static GLOBAL: Allocator = Allocator::system();

#[inline(never)]
fn allocate(total: usize, keep: usize, kept: &mut Vec<Vec<u8>>) {
    let sizes = [64usize, 256, 1000, 4000, 16_000];
    let mut done = 0;
    let mut i = 0;
    while done < total {
        let n = sizes[i % sizes.len()];
        i += 1;
        let v = std::hint::black_box(Vec::<u8>::with_capacity(n));
        done += n;
        if done <= keep {
            kept.push(v);
        }
    }
}

#[test]
fn sampled_bytes_estimate_what_a_span_allocated_and_kept() {
    let _serial = crate::sampler::tests::serial();
    assert!(installed());
    let sampler = crate::sampler::Sampler::start(100).expect("sampler");
    let profiler = AllocProfiler::start(32 * 1024, true).expect("allocation profiler");
    assert!(
        AllocProfiler::start(32 * 1024, false).is_err(),
        "one at a time"
    );
    let span = 0x5eed_0001_u64;
    let labels = crate::context::SpanLabels::new(span, 7, 0);
    const TOTAL: usize = 64 << 20;
    const KEEP: usize = 32 << 20;
    let mut kept = Vec::new();
    let before = crate::context::replace(labels);
    allocate(TOTAL, KEEP, &mut kept);
    crate::context::restore(before);

    let (mut bytes, mut objects, mut deep) = (0i64, 0i64, 0usize);
    let mut samples = 0;
    profiler.drain(|l, stack, v| {
        if l.span_id == span {
            bytes += v[1];
            objects += v[0];
            samples += 1;
            if stack.len() >= 4 {
                deep += 1;
            }
        }
    });
    let ratio = bytes as f64 / TOTAL as f64;
    assert!(
        (0.9..1.1).contains(&ratio),
        "alloc_space {bytes} for {TOTAL}: {ratio}"
    );
    assert!(objects > 0);
    assert!(
        deep * 10 >= samples * 9,
        "{deep} of {samples} stacks unwound"
    );

    let inuse = |p: &AllocProfiler| {
        let mut b = 0;
        p.in_use(|l, _, v| {
            if l.span_id == span {
                b += v[3];
            }
        });
        b
    };
    let live = inuse(&profiler);
    let ratio = live as f64 / KEEP as f64;
    assert!(
        (0.9..1.1).contains(&ratio),
        "inuse_space {live} for {KEEP}: {ratio}"
    );
    drop(kept);
    let live = inuse(&profiler);
    assert!(live < 2 << 20, "inuse_space {live} after freeing");
    assert_eq!(profiler.stats().dropped, 0);
    drop(profiler);
    drop(sampler);
}

#[test]
#[ignore = "a measurement"]
fn cost_per_sample() {
    let _serial = crate::sampler::tests::serial();
    let sampler = crate::sampler::Sampler::start(100).expect("sampler");
    for heap in [false, true] {
        let profiler = AllocProfiler::start(1, heap).expect("allocation profiler");
        let before = crate::context::replace(crate::context::SpanLabels::new(1, 2, 0));
        let n = 200_000;
        let t = std::time::Instant::now();
        for _ in 0..n {
            std::hint::black_box(Vec::<u8>::with_capacity(64));
        }
        let took = t.elapsed();
        crate::context::restore(before);
        let t = std::time::Instant::now();
        let mut entries = 0;
        profiler.drain(|_, _, _| entries += 1);
        let drain = t.elapsed();
        let stats = profiler.stats();
        eprintln!(
            "heap {heap}: {:.0} ns per sampled alloc+free, drain {:?} ({entries} entries), {stats:?}",
            took.as_nanos() as f64 / n as f64,
            drain
        );
        drop(profiler);
    }
    drop(sampler);
}
