//! Models of the label slot under loom: every interleaving (within the
//! preemption bound) of the owner writing its labels and another thread
//! reading them. Run by `scripts/test.sh`.

use super::*;

#[test]
fn loom_a_read_racing_writes_is_never_torn() {
    let a = SpanLabels::new(0x1111, 0x2222 << 64 | 0x3333, 0x44).with_fields(0x55);
    let b = SpanLabels::new(0x6666, 0x7777 << 64 | 0x8888, 0x99).with_fields(0xaa);
    let c = SpanLabels::new(0xbbbb, 0xcccc << 64 | 0xdddd, 0xee).with_fields(0xff);
    let mut model = loom::model::Builder::new();
    model.preemption_bound = Some(3);
    model.check(move || {
        let entry = loom::sync::Arc::new(Entry::new());
        // Claimed by tid 7 (generation 0), labels `a`.
        entry.write(a);
        entry.owner.store(owner_word(0, 7), Ordering::Release);
        let writer = {
            let entry = entry.clone();
            // The second write rewrites the copy `a` is in.
            loom::thread::spawn(move || {
                entry.write(b);
                entry.write(c);
            })
        };
        if let Some(read) = entry.read(0, || ()) {
            assert!(read == a || read == b || read == c, "torn read: {read:?}");
        }
        writer.join().unwrap();
    });
}
