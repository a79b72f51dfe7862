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
    let base = live::len();
    let addrs: Vec<usize> = (0..100).map(|i| 0x7f00_0000_0000 + i * 4096).collect();
    for (i, &a) in addrs.iter().enumerate() {
        assert!(live::remember(a, 1000 + i as u32, 64));
    }
    assert_eq!(live::len(), base + 100);
    let mut seen = 0;
    live::for_each(|id, size| {
        if (1000..1100).contains(&id) {
            assert_eq!(size, 64);
            seen += 1;
        }
    });
    assert_eq!(seen, 100);
    // Freeing an address never remembered changes nothing.
    live::forget(0x7f00_0000_0008);
    assert_eq!(live::len(), base + 100);
    for &a in &addrs {
        live::forget(a);
    }
    assert_eq!(live::len(), base);
}
