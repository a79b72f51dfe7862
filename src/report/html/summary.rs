//! The document head (title, style, content security policy) and the page
//! header: what the directory holds, and notes on what was left out.

use std::fmt::Write as _;
use std::path::Path;

use super::text::{esc, fmt_time, percent, unix_nanos_now};
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
    let _ = write!(
        h,
        "<header><h1>Span profiles</h1><p class=\"meta\">{dir} · generated {now} · \
         {spans} root spans in {traces} traces · {files} pprof files · {samples} samples, \
         {with_span} with a span id ({pct})</p>",
        dir = esc(&dir.display().to_string()),
        now = fmt_time(unix_nanos_now()),
        spans = data.spans.len(),
        traces = total_traces,
        files = data.files.len(),
        samples = data.total_samples,
        with_span = data.samples_with_span,
        pct = percent(data.samples_with_span, data.total_samples),
    );
    if spans_without_graph > 0 {
        let _ = write!(
            h,
            "<p class=\"note\">Flame graphs are included for the {MAX_SPAN_FLAME_GRAPHS} heaviest \
             spans (by CPU samples) only; {spans_without_graph} lighter spans with samples have none here. \
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

#[cfg(test)]
mod tests {
    #[test]
    fn style_sheet_can_sit_in_a_style_element() {
        assert!(!super::REPORT_CSS.contains("</"));
    }
}
