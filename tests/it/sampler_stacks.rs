//! Stacks are right: a known chain of `#[inline(never)]` functions must show
//! up in order in the samples taken inside it. CI runs this test twice: in
//! the ordinary release build (no frame pointers, DWARF CFI unwinding) and
//! with `-C force-frame-pointers=yes`.

use crate::cpu_clock;
use crate::pprof_tool;

use cpu_clock::thread_cpu_nanos;
use std::hint::black_box;
use std::sync::Mutex;
use std::time::Duration;

use tracing_pyroscope::context;

#[inline(never)]
fn chain_outer(nanos: u64) -> u64 {
    black_box(chain_middle(black_box(nanos)) ^ 0x11)
}

#[inline(never)]
fn chain_middle(nanos: u64) -> u64 {
    black_box(chain_inner(black_box(nanos)).rotate_left(3))
}

#[inline(never)]
fn chain_inner(nanos: u64) -> u64 {
    let end = thread_cpu_nanos() + nanos;
    let mut x = 7u64;
    while thread_cpu_nanos() < end {
        for _ in 0..5000 {
            x = black_box(x.wrapping_mul(0x9E37_79B9_7F4A_7C15).rotate_left(7));
        }
    }
    x
}

/// One profiler per process: the tests take turns.
static SERIAL: Mutex<()> = Mutex::new(());

#[test]
fn known_call_chain_is_unwound_in_order() {
    isolated!();
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let dir = std::env::temp_dir().join(format!("tracing-pyroscope-stacks-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let (_layer, guard) = tracing_pyroscope::Builder::new("stacks-test")
        .profiles_dir(&dir)
        .sample_rate(500)
        .upload_interval(Duration::from_secs(60))
        .span_labels(["mark"])
        .build()
        .expect("start profiler");
    let worker = std::thread::Builder::new()
        .name("chain".into())
        .spawn(|| {
            context::with_labels(&[("mark", "chain")], || {
                black_box(chain_outer(1_500_000_000));
            });
        })
        .unwrap();
    worker.join().unwrap();
    drop(guard);

    let mut in_inner = 0u64;
    let mut full_chain = 0u64;
    for file in pprof_tool::profile_files(&dir) {
        for tr in pprof_tool::traces(&file) {
            if tr.labels.get("mark").map(String::as_str) != Some("chain") {
                continue;
            }
            let Some(i) = tr.frames.iter().position(|f| f.contains("chain_inner")) else {
                continue;
            };
            in_inner += tr.count;
            let rest: Vec<&str> = tr.frames[i + 1..].iter().map(String::as_str).collect();
            let ok = rest.first().is_some_and(|f| f.contains("chain_middle"))
                && rest.get(1).is_some_and(|f| f.contains("chain_outer"))
                // ...and on through std's thread entry to libc's thread root.
                && rest.iter().any(|f| f.contains("thread_start"));
            if ok {
                full_chain += tr.count;
            } else if full_chain == 0 {
                println!("broken stack: {:?}", tr.frames);
            }
        }
    }
    let share = full_chain as f64 / in_inner.max(1) as f64;
    println!(
        "{full_chain}/{in_inner} samples in chain_inner have the full chain ({:.1}%)",
        share * 100.0
    );
    assert!(
        in_inner >= 300,
        "too few samples in chain_inner: {in_inner}"
    );
    assert!(
        share >= 0.99,
        "only {:.1}% of stacks complete",
        share * 100.0
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// The lowest usable address of this thread's stack (above its guard page).
fn stack_bottom() -> u64 {
    // SAFETY: attr is initialised by pthread_getattr_np and destroyed after.
    unsafe {
        let mut attr: libc::pthread_attr_t = std::mem::zeroed();
        assert_eq!(libc::pthread_getattr_np(libc::pthread_self(), &mut attr), 0);
        let mut addr: *mut libc::c_void = std::ptr::null_mut();
        let mut size: libc::size_t = 0;
        assert_eq!(libc::pthread_attr_getstack(&attr, &mut addr, &mut size), 0);
        libc::pthread_attr_destroy(&mut attr);
        addr as u64
    }
}

/// Recurses in 1 KiB frames until about `leave` bytes of stack are left,
/// then burns `nanos` of CPU there.
#[inline(never)]
fn descend(bottom: u64, leave: u64, nanos: u64) -> u64 {
    let mut pad = [0u8; 1024];
    black_box(&mut pad);
    let here = pad.as_ptr() as u64;
    if here - bottom > leave + 1024 {
        black_box(descend(bottom, leave, nanos)) ^ u64::from(pad[7])
    } else {
        at_the_bottom(nanos)
    }
}

#[inline(never)]
fn at_the_bottom(nanos: u64) -> u64 {
    let end = thread_cpu_nanos() + nanos;
    let mut x = 5u64;
    while thread_cpu_nanos() < end {
        x = black_box(x.wrapping_mul(0x9E37_79B9_7F4A_7C15).rotate_left(9));
    }
    x
}

#[test]
fn a_thread_nearly_out_of_stack_is_sampled_without_overflowing_it() {
    isolated!();
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let dir = std::env::temp_dir().join(format!(
        "tracing-pyroscope-low-stack-{}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    let (_layer, guard) = tracing_pyroscope::Builder::new("low-stack-test")
        .profiles_dir(&dir)
        .sample_rate(1000)
        .upload_interval(Duration::from_secs(60))
        .span_labels(["mark"])
        .build()
        .expect("start profiler");
    // 6 KiB left at the leaf: room for the kernel's signal frame (AVX-512
    // state included) and a leaf-only sample, not for an unwind (~9 KiB).
    let worker = std::thread::Builder::new()
        .name("low-stack".into())
        .stack_size(128 * 1024)
        .spawn(|| {
            context::with_labels(&[("mark", "low-stack")], || {
                let bottom = stack_bottom();
                black_box(descend(bottom, 6 * 1024, 500_000_000));
            });
        })
        .unwrap();
    worker.join().expect("the low-stack thread survived");
    drop(guard);
    let mut samples = 0;
    for file in pprof_tool::profile_files(&dir) {
        for tr in pprof_tool::traces(&file) {
            if tr.labels.get("mark").map(String::as_str) == Some("low-stack") {
                samples += tr.count;
            }
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    println!("{samples} samples taken near the bottom of a 128 KiB stack");
    assert!(samples >= 200, "too few samples: {samples}");
}

/// A frame of 256 KiB: its prologue is LLVM's inline stack-probe loop (one
/// store per page), where the CFI gives the CFA from `r11`. Nearly all of
/// its time is in that loop: nothing initialises the buffer.
#[inline(never)]
fn big_frame(i: u64) -> u64 {
    let mut buf = std::mem::MaybeUninit::<[u64; 32 * 1024]>::uninit();
    black_box(&mut buf);
    black_box(i)
}

#[inline(never)]
fn calls_big_frames(nanos: u64) -> u64 {
    let end = thread_cpu_nanos() + nanos;
    let mut x = 0u64;
    while thread_cpu_nanos() < end {
        for i in 0..200 {
            x = x.wrapping_add(big_frame(i));
        }
    }
    x
}

#[test]
fn samples_in_a_stack_probe_loop_are_unwound() {
    isolated!();
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let dir = std::env::temp_dir().join(format!("tracing-pyroscope-probe-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let (_layer, guard) = tracing_pyroscope::Builder::new("probe-test")
        .profiles_dir(&dir)
        .sample_rate(1000)
        .upload_interval(Duration::from_secs(60))
        .span_labels(["mark"])
        .build()
        .expect("start profiler");
    std::thread::Builder::new()
        .name("big-frames".into())
        .spawn(|| {
            context::with_labels(&[("mark", "big")], || {
                black_box(calls_big_frames(1_500_000_000));
            });
        })
        .unwrap()
        .join()
        .unwrap();
    drop(guard);
    let (mut in_big, mut rooted) = (0u64, 0u64);
    for file in pprof_tool::profile_files(&dir) {
        for tr in pprof_tool::traces(&file) {
            if tr.labels.get("mark").map(String::as_str) != Some("big") {
                continue;
            }
            let Some(i) = tr.frames.iter().position(|f| f.ends_with("::big_frame")) else {
                continue;
            };
            in_big += tr.count;
            let rest = &tr.frames[i + 1..];
            if rest.first().is_some_and(|f| f.contains("calls_big_frames"))
                && rest.iter().any(|f| f.contains("thread_start"))
            {
                rooted += tr.count;
            } else if rooted == 0 {
                println!("broken stack: {:?}", tr.frames);
            }
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    println!("{rooted}/{in_big} samples in big_frame unwound to the thread's root");
    if cfg!(debug_assertions) {
        // Debug builds keep the frame but may probe it differently.
        return;
    }
    assert!(in_big >= 200, "too few samples in big_frame: {in_big}");
    assert!(
        rooted as f64 >= 0.99 * in_big as f64,
        "{rooted}/{in_big} samples in a stack-probe loop unwound"
    );
}
