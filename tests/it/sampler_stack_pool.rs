//! Stack reads stay on live memory when stacks come from a pool: one
//! mapping cut into parts, each given to a thread as its stack
//! (`pthread_attr_setstack`), the way coroutine and green-thread runtimes
//! and thread pools with custom stacks do. The maps snapshot sees the pool
//! as one mapping. A neighbour's part is then unmapped while two threads
//! spin, sampled at 1000 Hz, in a frame whose frame pointer (and the CFI
//! that follows it) points into that hole. One thread registered with the
//! label arena (its stack is known exactly), the other never did (its
//! stack is bounded by the snapshot, checked page by page). A read of the
//! hole would kill this process with `SIGSEGV`.

#[cfg(target_arch = "x86_64")]
mod pool {
    use crate::cpu_clock::thread_cpu_nanos;
    use crate::pprof_tool;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    // Spins `spins` times with its frame pointer set to `frame`, and CFI
    // saying the caller's frame is there: an unwinder reads the return
    // address at `frame + 8` and the saved frame pointer at `frame`.
    core::arch::global_asm!(
        ".text",
        ".globl tp_bogus_frame_spin",
        ".type tp_bogus_frame_spin,@function",
        "tp_bogus_frame_spin:",
        ".cfi_startproc",
        "push rbp",
        ".cfi_def_cfa_offset 16",
        ".cfi_offset rbp, -16",
        "mov rbp, rdi",
        ".cfi_def_cfa rbp, 16",
        "2:",
        "dec rsi",
        "jnz 2b",
        "pop rbp",
        ".cfi_def_cfa rsp, 8",
        "ret",
        ".cfi_endproc",
        ".size tp_bogus_frame_spin, .-tp_bogus_frame_spin",
    );

    extern "C" {
        fn tp_bogus_frame_spin(frame: u64, spins: u64);
    }

    const PART: usize = 256 * 1024;
    const PARTS: usize = 4;
    /// CPU time each worker spends in the bogus frame.
    const SPIN_NANOS: u64 = 1_000_000_000;
    const REGISTERED: &str = "registered";

    struct Job {
        /// Where the bogus frame pointer points: the neighbour's part.
        frame: u64,
        register: bool,
        go: Arc<AtomicBool>,
    }

    extern "C" fn worker(arg: *mut libc::c_void) -> *mut libc::c_void {
        // SAFETY: `arg` is the `Box<Job>` leaked by `spawn_on`.
        let job = unsafe { Box::from_raw(arg as *mut Job) };
        let spin = || {
            while !job.go.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(5));
            }
            let end = thread_cpu_nanos() + SPIN_NANOS;
            while thread_cpu_nanos() < end {
                // SAFETY: the function restores the frame pointer it changes
                // and touches no memory but its own push and pop.
                unsafe { tp_bogus_frame_spin(job.frame, 200_000) };
            }
        };
        if job.register {
            // Labels make the thread register with the label arena, which
            // records its stack.
            tracing_pyroscope::context::with_labels(&[("mark", REGISTERED)], spin);
        } else {
            spin();
        }
        std::ptr::null_mut()
    }

    extern "C" fn idle(_: *mut libc::c_void) -> *mut libc::c_void {
        std::ptr::null_mut()
    }

    /// Starts `entry` on a thread whose stack is `part`.
    fn spawn_on(
        part: u64,
        entry: extern "C" fn(*mut libc::c_void) -> *mut libc::c_void,
        job: Option<Job>,
    ) -> libc::pthread_t {
        let arg = job.map_or(std::ptr::null_mut(), |j| {
            Box::into_raw(Box::new(j)) as *mut libc::c_void
        });
        // SAFETY: plain pthread calls with valid pointers; the stack part
        // stays mapped until the thread was joined.
        unsafe {
            let mut attr: libc::pthread_attr_t = std::mem::zeroed();
            assert_eq!(libc::pthread_attr_init(&mut attr), 0);
            assert_eq!(
                libc::pthread_attr_setstack(&mut attr, part as *mut libc::c_void, PART),
                0
            );
            let mut thread: libc::pthread_t = 0;
            assert_eq!(libc::pthread_create(&mut thread, &attr, entry, arg), 0);
            libc::pthread_attr_destroy(&mut attr);
            thread
        }
    }

    fn join(thread: libc::pthread_t) {
        // SAFETY: a joinable thread created by `spawn_on`.
        assert_eq!(
            unsafe { libc::pthread_join(thread, std::ptr::null_mut()) },
            0
        );
    }

    pub fn run() {
        let dir = std::env::temp_dir().join(format!(
            "tracing-pyroscope-stack-pool-{}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        let (_layer, guard) = tracing_pyroscope::Builder::new("stack-pool-test")
            .profiles_dir(&dir)
            .sample_rate(1000)
            .upload_interval(Duration::from_secs(60))
            .span_labels(["mark"])
            .build()
            .expect("start profiler");
        // SAFETY: a fresh anonymous mapping.
        let pool = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                PART * PARTS,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(pool, libc::MAP_FAILED);
        let part = |i: usize| pool as u64 + (i * PART) as u64;
        // Parts 1 and 3 served threads that are gone.
        for i in [1, 3] {
            join(spawn_on(part(i), idle, None));
        }
        let go = Arc::new(AtomicBool::new(false));
        let workers: Vec<_> = [(0, true), (2, false)]
            .into_iter()
            .map(|(i, register)| {
                let job = Job {
                    frame: part(i + 1) + 4096,
                    register,
                    go: go.clone(),
                };
                spawn_on(part(i), worker, Some(job))
            })
            .collect();
        // The manager arms the new threads, reading the maps first: the
        // pool is one mapping there.
        std::thread::sleep(Duration::from_millis(300));
        // The pool frees the parts of the threads that are gone. Nothing
        // makes the manager read the maps again: no thread starts or
        // stops, and every stack pointer lies in the snapshot.
        for i in [1, 3] {
            // SAFETY: the parts of threads joined above, not used since.
            assert_eq!(
                unsafe { libc::munmap(part(i) as *mut libc::c_void, PART) },
                0
            );
        }
        go.store(true, Ordering::SeqCst);
        for w in workers {
            join(w);
        }
        drop(guard);
        let (mut registered, mut unregistered) = (0u64, 0u64);
        for file in pprof_tool::profile_files(&dir) {
            for tr in pprof_tool::traces(&file) {
                if !tr.frames.iter().any(|f| f.contains("tp_bogus_frame_spin")) {
                    continue;
                }
                if tr.labels.get("mark").map(String::as_str) == Some(REGISTERED) {
                    registered += tr.count;
                } else {
                    unregistered += tr.count;
                }
            }
        }
        let _ = std::fs::remove_dir_all(&dir);
        // SAFETY: the parts still mapped, threads joined.
        unsafe {
            libc::munmap(part(0) as *mut libc::c_void, PART);
            libc::munmap(part(2) as *mut libc::c_void, PART);
        }
        println!(
            "samples in the bogus frame: {registered} on the registered thread, {unregistered} on the other"
        );
        // 1 s of CPU each at 1000 Hz; on a loaded machine timer expiries
        // merge, so ask for a fifth.
        assert!(registered >= 200, "registered thread: {registered} samples");
        assert!(
            unregistered >= 200,
            "unregistered thread: {unregistered} samples"
        );
    }
}

#[test]
fn stack_reads_skip_a_neighbours_unmapped_stack() {
    isolated!();
    #[cfg(target_arch = "x86_64")]
    pool::run();
    #[cfg(not(target_arch = "x86_64"))]
    println!("skipped: the bogus frame is written in x86-64 assembly");
}
