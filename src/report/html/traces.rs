//! The traces section: filter and sort controls, then one row per trace
//! (spans grouped by trace id) with a waterfall of its spans (local roots;
//! under scope `all` their child spans too); each span row shows where its
//! time went ([`Breakdown`]) and can open the span's own flame graphs.

use std::collections::{BTreeSet, HashMap};
use std::fmt::Write as _;

use super::breakdown::Breakdown;
use super::flame::{Flames, PanelFor};
use super::text::{esc, fmt_duration, fmt_time};
use super::{Data, Span, SpanGraphs};

/// Root spans grouped into one row.
pub(super) struct Trace<'a> {
    trace_id: Option<&'a str>,
    spans: Vec<&'a Span>,
    cpu_nanos: u64,
    samples: u64,
    start: Option<u64>,
    end: Option<u64>,
}

impl Trace<'_> {
    fn new(trace_id: Option<&str>) -> Trace<'_> {
        Trace {
            trace_id,
            spans: Vec::new(),
            cpu_nanos: 0,
            samples: 0,
            start: None,
            end: None,
        }
    }

    fn duration(&self) -> Option<u64> {
        Some(self.end?.saturating_sub(self.start?))
    }
}

/// The traces, heaviest (by CPU, then samples, then duration) first; the
/// spans of each in start order.
pub(super) fn group(data: &Data) -> Vec<Trace<'_>> {
    let mut by_trace: HashMap<&str, usize> = HashMap::new();
    let mut traces: Vec<Trace<'_>> = Vec::new();
    let mut spans: Vec<&Span> = data.spans.values().collect();
    spans.sort_by(|a, b| {
        (a.start.is_none(), a.start, &a.span_id).cmp(&(b.start.is_none(), b.start, &b.span_id))
    });
    for span in spans {
        let index = match span.trace_id.as_deref() {
            Some(t) => *by_trace.entry(t).or_insert_with(|| {
                traces.push(Trace::new(Some(t)));
                traces.len() - 1
            }),
            None => {
                traces.push(Trace::new(None));
                traces.len() - 1
            }
        };
        let Some(trace) = traces.get_mut(index) else {
            continue;
        };
        trace.cpu_nanos += span.profile.cpu.total;
        trace.samples += span.profile.cpu.samples;
        if let Some(s) = span.start {
            trace.start = Some(trace.start.map_or(s, |t| t.min(s)));
        }
        if let Some(e) = span.end {
            trace.end = Some(trace.end.map_or(e, |t| t.max(e)));
        }
        trace.spans.push(span);
    }
    traces.sort_by(|a, b| {
        b.cpu_nanos
            .cmp(&a.cpu_nanos)
            .then_with(|| b.samples.cmp(&a.samples))
            .then_with(|| b.duration().cmp(&a.duration()))
            .then_with(|| a.trace_id.cmp(&b.trace_id))
    });
    traces
}

/// The whole section; returns how many span flame graphs it holds.
pub(super) fn write(
    h: &mut String,
    data: &Data,
    traces: &[Trace<'_>],
    graphs: &SpanGraphs<'_>,
    flames: &mut Flames<'_>,
) -> usize {
    write_controls(h, data, traces.len());
    if traces.is_empty() {
        h.push_str("<p class=\"empty\">No spans recorded.</p>\n");
    }
    h.push_str("<div id=\"traces\">\n");
    let mut span_flame_graphs = 0;
    for (ti, trace) in traces.iter().enumerate() {
        write_trace_head(h, trace);
        h.push_str("<div class=\"waterfall\">\n");
        for (si, span) in trace.spans.iter().enumerate() {
            let panel = format!("p-{ti}-{si}");
            if write_span(h, trace, span, &panel, graphs, flames) {
                span_flame_graphs += 1;
            }
        }
        h.push_str("</div></section>\n");
    }
    h.push_str("</div></section>\n");
    span_flame_graphs
}

/// The section's heading and the filter and sort controls.
fn write_controls(h: &mut String, data: &Data, shown: usize) {
    let services: BTreeSet<&str> = data
        .spans
        .values()
        .map(|s| s.service.as_str())
        .chain(data.services.keys().map(String::as_str))
        .filter(|s| !s.is_empty())
        .collect();
    h.push_str(
        "<section id=\"trace-list\"><h2>Traces</h2>\n<div class=\"controls\">\
         <label>Filter <input id=\"q\" type=\"search\" placeholder=\"span name or id\"></label> \
         <label>Service <select id=\"svc\"><option value=\"\">all</option>",
    );
    for s in &services {
        let _ = write!(h, "<option>{}</option>", esc(s));
    }
    let _ = writeln!(
        h,
        "</select></label> <label>Sort by <select id=\"sort\">\
         <option value=\"cpu\">CPU time</option><option value=\"dur\">duration</option>\
         <option value=\"start\">newest first</option></select></label> \
         <span class=\"dim\"><span id=\"shown\">{shown}</span> shown</span> \
         <span class=\"legend dim\">each span's time:<span class=\"seg cpu\"></span>CPU\
         <span class=\"seg blocked\"></span>blocked<span class=\"seg awaiting\"></span>awaiting\
         <span class=\"seg rest\"></span>not measured</span></div>",
    );
}

/// Opens a trace row (`<section class="trace">`, with the data the page's
/// script filters and sorts by) and writes its head line.
fn write_trace_head(h: &mut String, trace: &Trace<'_>) {
    let mut names = String::new();
    let mut trace_services = BTreeSet::new();
    for s in &trace.spans {
        names.push_str(&s.name.to_lowercase());
        names.push('\n');
        names.push_str(&s.span_id);
        names.push('\n');
        trace_services.insert(s.service.as_str());
    }
    if let Some(t) = trace.trace_id {
        names.push_str(t);
    }
    let services_attr: Vec<&str> = trace_services.into_iter().collect();
    let first = trace.spans.first().map(|s| s.name.as_str()).unwrap_or("");
    let _ = write!(
        h,
        "<section class=\"trace\" data-cpu=\"{cpu}\" data-dur=\"{dur}\" data-start=\"{start}\" \
         data-names=\"{names}\" data-services=\"{svcs}\">\n<div class=\"trace-head\">\
         <b>{first}</b> <span class=\"dim\">trace {tid} · {n} span{plural} · {dur_s} · CPU {cpu_s}{when}</span></div>\n",
        cpu = trace.cpu_nanos,
        dur = trace.duration().unwrap_or(0),
        start = trace.start.unwrap_or(0),
        names = esc(&names),
        svcs = esc(&services_attr.join("\n")),
        first = esc(display_name(first)),
        tid = trace
            .trace_id
            .map(|t| format!("<code>{t}</code>"))
            .unwrap_or_else(|| "<i>none</i>".to_string()),
        n = trace.spans.len(),
        plural = if trace.spans.len() == 1 { "" } else { "s" },
        dur_s = trace
            .duration()
            .map(fmt_duration)
            .unwrap_or_else(|| "duration unknown".to_string()),
        cpu_s = fmt_duration(trace.cpu_nanos),
        when = trace
            .start
            .map(|t| format!(" · {}", fmt_time(t)))
            .unwrap_or_default(),
    );
}

/// One span of the waterfall: its row (name, bar, duration, CPU), its ids,
/// and its flame-graph panel if it has one (then returns true).
fn write_span(
    h: &mut String,
    trace: &Trace<'_>,
    span: &Span,
    panel: &str,
    graphs: &SpanGraphs<'_>,
    flames: &mut Flames<'_>,
) -> bool {
    let region = span
        .labels
        .get("region")
        .map(|r| format!(" · region <b>{}</b>", esc(r)))
        .unwrap_or_default();
    let duration = match (span.start, span.end) {
        (Some(s0), Some(s1)) => fmt_duration(s1.saturating_sub(s0)),
        _ => "?".to_string(),
    };
    let breakdown = Breakdown::of(span);
    let (cpu, estimate) = match &breakdown {
        Some(b) => (b.cpu_text(), b.estimate),
        None => (fmt_duration(span.profile.cpu.total), false),
    };
    let _ = write!(
        h,
        "<div class=\"span{child}\" data-span-id=\"{id}\" data-samples=\"{samples}\"><div class=\"span-row\">\
         <div class=\"label\" title=\"{name_attr}\">{arrow}{name} <span class=\"dim\">{service}{region}</span></div>\
         <div class=\"track\">{bar}</div>\
         <div class=\"parts\">{parts}</div>\
         <div class=\"num\">{duration}</div><div class=\"num cpu{est}\" title=\"{samples} CPU samples\">CPU {cpu}</div>",
        child = if span.recorded && !span.root { " child" } else { "" },
        arrow = if span.recorded && !span.root { "↳ " } else { "" },
        id = span.span_id,
        name_attr = esc(&span.name),
        name = esc(display_name(&span.name)),
        service = esc(&span.service),
        bar = waterfall_bar(trace, span),
        parts = breakdown.map(|b| b.bar()).unwrap_or_default(),
        samples = span.profile.cpu.samples,
        est = if estimate { " estimate" } else { "" },
    );
    let ids = span_ids(span);
    let with_graph = graphs.has_graph(span);
    if with_graph {
        let title = format!("{} ({}): span {}", span.name, span.service, span.span_id);
        let target = PanelFor {
            kind: "span",
            key: &span.span_id,
            panel,
        };
        flames.push_panel(h, &target, &span.profile, &title, &ids);
    } else {
        let why = if !span.profile.any_samples() {
            "no samples"
        } else {
            "not among the heaviest"
        };
        let _ = write!(
            h,
            "<div class=\"num\"><span class=\"dim\">{why}</span></div></div>{ids}"
        );
    }
    h.push_str("</div>\n");
    with_graph
}

/// The span's bar, placed within the trace's time range.
fn waterfall_bar(trace: &Trace<'_>, span: &Span) -> String {
    match (trace.start, trace.duration(), span.start, span.end) {
        (Some(t0), Some(total), Some(s0), Some(s1)) if total > 0 => {
            let left = (s0.saturating_sub(t0)) as f64 * 100.0 / total as f64;
            let width = (s1.saturating_sub(s0)) as f64 * 100.0 / total as f64;
            format!(
                "<div class=\"bar\" style=\"left:{left:.2}%;width:{:.2}%\"></div>",
                width.max(0.3)
            )
        }
        (_, _, Some(_), Some(_)) => {
            "<div class=\"bar\" style=\"left:0;width:100%\"></div>".to_string()
        }
        _ => "<div class=\"bar unknown\" style=\"left:0;width:100%\"></div>".to_string(),
    }
}

/// The line under a span row: span id, trace id, remote parent, and
/// whether the span is known only from samples.
fn span_ids(span: &Span) -> String {
    format!(
        "<div class=\"ids\">span <code>{}</code> · trace {}{}{}</div>",
        span.span_id,
        span.trace_id
            .as_deref()
            .map(|t| format!("<code>{t}</code>"))
            .unwrap_or_else(|| "<i>none</i>".to_string()),
        span.parent_span_id
            .as_deref()
            .map(|p| format!(" · remote parent <code>{p}</code>"))
            .unwrap_or_default(),
        if span.recorded {
            ""
        } else {
            " · <i>seen only in samples (not in spans.jsonl)</i>"
        },
    )
}

fn display_name(name: &str) -> &str {
    if name.is_empty() {
        "(unnamed span)"
    } else {
        name
    }
}
