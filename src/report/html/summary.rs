//! The document head (title, style, content security policy) and the page
//! header: what the directory holds, and notes on what was left out.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::Path;

use super::text::{esc, fmt_duration, fmt_time, percent, unix_nanos_now};
use super::Data;
use crate::report::{MAX_SPAN_FLAME_GRAPHS, MAX_TRACE_ROWS};

/// The page's style sheet.
const REPORT_CSS: &str = include_str!("../assets/report.css");

/// Start of the document. The policy forbids every network fetch: the page
/// and its flame graphs run only inline styles and scripts.
const HEAD: &str = "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; img-src data:; frame-src 'self' about:\">\n\
<link rel=\"icon\" href=\"data:,\">\n";

/// The document up to and including `<body>`.
pub(super) fn write_head(h: &mut String, dir: &Path) {
    h.push_str(HEAD);
    let _ = write!(
        h,
        "<title>Span profiles: {}</title>\n<style>\n{REPORT_CSS}</style>\n</head>\n<body>\n",
        esc(&dir.display().to_string())
    );
}

/// The `<header>`: counts, then a note for each thing left out.
/// `spans_without_graph`: spans with samples that get no flame graph.
pub(super) fn write_header(
    h: &mut String,
    data: &Data,
    dir: &Path,
    total_traces: usize,
    spans_without_graph: usize,
) {
    let roots = data.spans.values().filter(|s| s.recorded && s.root).count();
    let children = data
        .spans
        .values()
        .filter(|s| s.recorded && !s.root)
        .count();
    let only_in_samples = data.spans.len() - roots - children;
    let mut kinds: Vec<&str> = data.files.iter().map(|f| f.kind).collect();
    kinds.sort_unstable();
    kinds.dedup();
    let _ = write!(
        h,
        "<header><h1>Span profiles</h1><p class=\"meta\">{dir} · generated {now} · \
         <span id=\"span-count\">{spans} spans in {traces} traces ({roots} local root{rs}{children}{only})</span> · \
         {files} pprof files ({kinds}) · {samples} CPU samples, {with_span} with a span id ({pct})</p>",
        dir = esc(&dir.display().to_string()),
        now = fmt_time(unix_nanos_now()),
        spans = data.spans.len(),
        traces = total_traces,
        rs = if roots == 1 { "" } else { "s" },
        children = if children > 0 {
            format!(", {children} child spans (scope all)")
        } else {
            String::new()
        },
        only = if only_in_samples > 0 {
            format!(", {only_in_samples} seen only in samples")
        } else {
            String::new()
        },
        files = data.files.len(),
        kinds = if kinds.is_empty() {
            "none".to_string()
        } else {
            kinds.join(", ")
        },
        samples = data.total_samples,
        with_span = data.samples_with_span,
        pct = percent(data.samples_with_span, data.total_samples),
    );
    write_lost_attribution(h, data);
    if spans_without_graph > 0 {
        let _ = write!(
            h,
            "<p class=\"note\">Flame graphs are included for the {MAX_SPAN_FLAME_GRAPHS} heaviest \
             spans (by CPU samples, then wall time) only; {spans_without_graph} lighter spans with samples have none here. \
             Open the pprof files below for everything.</p>",
        );
    }
    if total_traces > MAX_TRACE_ROWS {
        let _ = write!(
            h,
            "<p class=\"note\">Showing the {MAX_TRACE_ROWS} heaviest of {total_traces} traces.</p>"
        );
    }
    if data.skipped_span_lines > 0 {
        let _ = write!(
            h,
            "<p class=\"note\">{} line(s) of spans.jsonl could not be read (e.g. a line still being written) and were skipped.</p>",
            data.skipped_span_lines
        );
    }
    h.push_str("</header>\n");
}

/// Threads whose CPU outside spans is worth a sentence of its own.
const BLOCKING_POOL: &str = "tokio blocking pool (spawn_blocking)";

/// "Lost attribution, said out loud": the share of CPU samples that
/// carried no span, its top functions and the threads it ran on, and the
/// fix when most of it ran in tokio's blocking pool.
fn write_lost_attribution(h: &mut String, data: &Data) {
    let outside = &data.outside_spans;
    if data.total_samples == 0 {
        return;
    }
    let _ = write!(
        h,
        "<div id=\"lost\" class=\"lost\"><p><b>Outside any span: {pct} of CPU</b> \
         <span class=\"dim\">({n} of {total} samples, {cpu})</span></p>",
        pct = percent(outside.samples, data.total_samples),
        n = outside.samples,
        total = data.total_samples,
        cpu = fmt_duration(outside.total),
    );
    if outside.samples == 0 {
        h.push_str("</div>");
        return;
    }
    let mut functions: HashMap<&str, u64> = HashMap::new();
    let mut threads: HashMap<&'static str, u64> = HashMap::new();
    for (&stack, &samples) in &outside.stacks {
        let stack = data.stacks.get(stack);
        let leaf = stack.rsplit(';').next().unwrap_or("[unknown]");
        *functions.entry(leaf).or_default() += samples;
        *threads.entry(thread_kind(stack)).or_default() += samples;
    }
    let functions = top(functions);
    let threads = top(threads);
    let list = |items: &[(&str, u64)]| {
        items
            .iter()
            .map(|(name, n)| {
                format!(
                    "<li><code>{}</code> <span class=\"dim\">{}</span></li>",
                    esc(name),
                    percent(*n, outside.samples)
                )
            })
            .collect::<String>()
    };
    let _ = write!(
        h,
        "<div class=\"lost-lists\"><div>Top functions (leaf frames)<ol>{}</ol></div>\
         <div>Threads<ol id=\"lost-threads\">{}</ol></div></div>",
        list(&functions),
        list(&threads),
    );
    if threads.first().is_some_and(|(t, _)| *t == BLOCKING_POOL) {
        h.push_str(
            "<p id=\"lost-fix\" class=\"note\">Most of it ran in tokio's blocking pool: \
             <code>spawn_blocking</code> does not carry the caller's span, so carry it: \
             <code>let span = Span::current(); spawn_blocking(move || span.in_scope(f))</code>.</p>",
        );
    }
    h.push_str("</div>");
}

/// The five heaviest entries, heaviest first.
fn top(map: HashMap<&str, u64>) -> Vec<(&str, u64)> {
    let mut v: Vec<(&str, u64)> = map.into_iter().collect();
    v.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(b.0)));
    v.truncate(5);
    v
}

/// Which kind of thread a folded stack (root first) ran on, from its
/// outermost frames.
fn thread_kind(stack: &str) -> &'static str {
    if let Some(first) = stack.split(';').next() {
        if first.starts_with("tracing-pyroscope: ") {
            return "tracing-pyroscope's own threads";
        }
    }
    if stack.contains("tokio::runtime::blocking::pool") {
        BLOCKING_POOL
    } else if stack.contains("tokio::runtime::scheduler") {
        "tokio workers"
    } else if stack
        .split(';')
        .any(|f| f == "main" || f.ends_with("::main"))
    {
        "the main thread"
    } else {
        "other threads"
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn threads_are_told_apart_by_their_outer_frames() {
        use super::thread_kind;
        assert_eq!(
            thread_kind("std::sys::thread::Thread::new::thread_start;tokio::runtime::blocking::pool::Inner::run;app::query"),
            super::BLOCKING_POOL
        );
        assert_eq!(
            thread_kind("start;tokio::runtime::scheduler::multi_thread::worker::run;x"),
            "tokio workers"
        );
        assert_eq!(thread_kind("_start;main;app::main;x"), "the main thread");
        assert_eq!(
            thread_kind("tracing-pyroscope: collector (pyroscope-collect);x"),
            "tracing-pyroscope's own threads"
        );
    }

    #[test]
    fn cpu_outside_spans_is_said_out_loud_with_the_fix_for_spawn_blocking() {
        use crate::report::load::tests_support::outside;
        use crate::report::load::Data;
        let mut data = Data {
            samples_with_span: 31,
            total_samples: 31,
            ..Data::default()
        };
        outside(
            &mut data,
            "start;tokio::runtime::blocking::pool::Inner::run;app::query;sqlite3_step",
            69,
        );
        let mut h = String::new();
        super::write_lost_attribution(&mut h, &data);
        assert!(h.contains("Outside any span: 69.0% of CPU"), "{h}");
        assert!(h.contains("<code>sqlite3_step</code>"), "{h}");
        assert!(h.contains("id=\"lost-fix\""), "{h}");
        assert!(h.contains("span.in_scope(f)"), "{h}");

        // Mostly on tokio's workers: no spawn_blocking advice.
        let mut data = Data::default();
        outside(
            &mut data,
            "start;tokio::runtime::scheduler::multi_thread::worker::run;x",
            5,
        );
        outside(
            &mut data,
            "start;tokio::runtime::blocking::pool::Inner::run;y",
            1,
        );
        let mut h = String::new();
        super::write_lost_attribution(&mut h, &data);
        assert!(h.contains("Outside any span: 100.0% of CPU"), "{h}");
        assert!(!h.contains("lost-fix"), "{h}");
    }

    #[test]
    fn the_header_counts_child_spans_apart_from_local_roots() {
        use crate::report::load::tests_support::span_with;
        use crate::report::load::Data;
        let mut data = Data::default();
        let root = span_with(10, 0, 0, 0, 0, 0);
        let mut child = span_with(5, 0, 0, 0, 0, 0);
        child.span_id = "00000000000000ac".into();
        child.root = false;
        data.spans.insert(root.span_id.clone(), root);
        data.spans.insert(child.span_id.clone(), child);
        let mut h = String::new();
        super::write_header(&mut h, &data, std::path::Path::new("d"), 1, 0);
        assert!(
            h.contains("2 spans in 1 traces (1 local root, 1 child spans (scope all))"),
            "{h}"
        );
        assert!(!h.contains("root spans"), "{h}");
    }

    #[test]
    fn style_sheet_can_sit_in_a_style_element() {
        assert!(!super::REPORT_CSS.contains("</"));
    }
}
