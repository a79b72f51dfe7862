//! Rendering the report page: trace rows with waterfalls, per-span and
//! per-service flame graphs (inferno SVG, each in its own `<iframe srcdoc>`),
//! the file list, and a little inline CSS and JavaScript.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fmt::Write as _;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use super::load::{Data, Folded, Span, Stacks};
use super::{MAX_SPAN_FLAME_GRAPHS, MAX_TRACE_ROWS};

/// The rendered page and what it holds.
pub(super) struct Page {
    pub(super) html: String,
    pub(super) traces: usize,
    pub(super) span_flame_graphs: usize,
}

/// Root spans grouped into one row.
struct Trace<'a> {
    trace_id: Option<&'a str>,
    spans: Vec<&'a Span>,
    cpu_nanos: u64,
    samples: u64,
    start: Option<u64>,
    end: Option<u64>,
}

impl Trace<'_> {
    fn duration(&self) -> Option<u64> {
        Some(self.end?.saturating_sub(self.start?))
    }
}

pub(super) fn render(data: &Data, dir: &Path) -> Page {
    // The heaviest spans get their own flame graph.
    let mut by_weight: Vec<&Span> = data
        .spans
        .values()
        .filter(|s| s.profile.samples > 0)
        .collect();
    by_weight.sort_by(|a, b| {
        b.profile
            .samples
            .cmp(&a.profile.samples)
            .then_with(|| a.span_id.cmp(&b.span_id))
    });
    let spans_with_samples = by_weight.len();
    let with_graph: HashSet<&str> = by_weight
        .iter()
        .take(MAX_SPAN_FLAME_GRAPHS)
        .map(|s| s.span_id.as_str())
        .collect();

    let mut traces = group_traces(data);
    let total_traces = traces.len();
    traces.truncate(MAX_TRACE_ROWS);

    let services: BTreeSet<&str> = data
        .spans
        .values()
        .map(|s| s.service.as_str())
        .chain(data.services.keys().map(String::as_str))
        .filter(|s| !s.is_empty())
        .collect();

    let mut h = String::with_capacity(1 << 20);
    h.push_str(HEAD);
    let _ = write!(
        h,
        "<title>Span profiles: {}</title>\n<style>{CSS}</style>\n</head>\n<body>\n",
        esc(&dir.display().to_string())
    );
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
    if spans_with_samples > MAX_SPAN_FLAME_GRAPHS {
        let _ = write!(
            h,
            "<p class=\"note\">Flame graphs are included for the {MAX_SPAN_FLAME_GRAPHS} heaviest \
             spans (by CPU samples) only; {} lighter spans with samples have none here. \
             Open the pprof files below for everything.</p>",
            spans_with_samples - MAX_SPAN_FLAME_GRAPHS
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

    let mut flames = Flames {
        stacks: &data.stacks,
        shared_js: None,
    };
    // Services: aggregate flame graphs.
    h.push_str("<section id=\"services\"><h2>Services</h2>\n");
    if data.services.is_empty() {
        h.push_str("<p class=\"empty\">No profiles in this directory.</p>\n");
    }
    for (i, (service, folded)) in data.services.iter().enumerate() {
        let _ = write!(
            h,
            "<div class=\"service\"><div class=\"service-head\"><b>{name}</b> \
             <span class=\"dim\">{samples} samples · CPU {cpu}</span> ",
            name = esc(service),
            samples = folded.samples,
            cpu = fmt_duration(folded.cpu_nanos),
        );
        let panel = format!("svc-{i}");
        let title = format!("{service}: all samples");
        let target = PanelFor {
            kind: "service",
            key: service,
            panel: &panel,
        };
        flames.push_panel(&mut h, &target, folded, &title, "");
        h.push_str("</div>\n");
    }
    h.push_str("</section>\n");

    // Controls.
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
         <span class=\"dim\"><span id=\"shown\">{}</span> shown</span></div>",
        traces.len()
    );
    if traces.is_empty() {
        h.push_str("<p class=\"empty\">No spans recorded.</p>\n");
    }

    h.push_str("<div id=\"traces\">\n");
    let mut span_flame_graphs = 0;
    for (ti, trace) in traces.iter().enumerate() {
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
             <b>{first}</b> <span class=\"dim\">trace {tid} · {n} root span{plural} · {dur_s} · CPU {cpu_s}{when}</span></div>\n",
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
        h.push_str("<div class=\"waterfall\">\n");
        for (si, span) in trace.spans.iter().enumerate() {
            let bar = match (trace.start, trace.duration(), span.start, span.end) {
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
            };
            let region = span
                .labels
                .get("region")
                .map(|r| format!(" · region <b>{}</b>", esc(r)))
                .unwrap_or_default();
            let duration = match (span.start, span.end) {
                (Some(s0), Some(s1)) => fmt_duration(s1.saturating_sub(s0)),
                _ => "?".to_string(),
            };
            let _ = write!(
                h,
                "<div class=\"span\" data-span-id=\"{id}\" data-samples=\"{samples}\"><div class=\"span-row\">\
                 <div class=\"label\" title=\"{name_attr}\">{name} <span class=\"dim\">{service}{region}</span></div>\
                 <div class=\"track\">{bar}</div>\
                 <div class=\"num\">{duration}</div><div class=\"num\" title=\"{samples} samples\">CPU {cpu}</div>",
                id = span.span_id,
                name_attr = esc(&span.name),
                name = esc(display_name(&span.name)),
                service = esc(&span.service),
                samples = span.profile.samples,
                cpu = fmt_duration(span.profile.cpu_nanos),
            );
            let panel = format!("p-{ti}-{si}");
            let ids = format!(
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
            );
            if with_graph.contains(span.span_id.as_str()) {
                span_flame_graphs += 1;
                let title = format!("{} ({}): span {}", span.name, span.service, span.span_id);
                let target = PanelFor {
                    kind: "span",
                    key: &span.span_id,
                    panel: &panel,
                };
                flames.push_panel(&mut h, &target, &span.profile, &title, &ids);
            } else {
                let why = if span.profile.samples == 0 {
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
        }
        h.push_str("</div></section>\n");
    }
    h.push_str("</div></section>\n");

    // Files.
    h.push_str("<section id=\"files\"><h2>pprof files</h2>\n<p class=\"dim\">Open one in Google's pprof: <code>pprof -http=: FILE</code> (filter a span with <code>-tagfocus=span_id=ID</code>).</p>\n<ul>\n");
    let dir_abs = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    for file in &data.files {
        let name = file
            .path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let full = dir_abs.join(&name);
        let start = u64::try_from(file.start).unwrap_or(0);
        let _ = writeln!(
            h,
            "<li><code class=\"cmd\">pprof -http=: {cmd}</code> <span class=\"dim\">{service} · {samples} samples · {when} · {secs:.1} s</span></li>",
            cmd = esc(&shell_quote(&full.display().to_string())),
            service = esc(&file.service),
            samples = file.samples,
            when = if start > 0 { fmt_time(start) } else { "time unknown".to_string() },
            secs = file.duration_nanos as f64 / 1e9,
        );
    }
    for (path, why) in &data.skipped_files {
        let _ = writeln!(
            h,
            "<li class=\"skipped\">skipped <code>{}</code>: {}</li>",
            esc(&path.display().to_string()),
            esc(why)
        );
    }
    if data.files.is_empty() && data.skipped_files.is_empty() {
        h.push_str("<li class=\"empty\">none</li>\n");
    }
    h.push_str("</ul></section>\n");
    // inferno's script, once for all flame graphs (not executed here).
    let _ = write!(
        h,
        "<script type=\"text/plain\" id=\"inferno-js\">{}</script>\n<script>{JS}</script>\n</body>\n</html>\n",
        flames.shared_js.unwrap_or_default()
    );

    Page {
        html: h,
        traces: traces.len(),
        span_flame_graphs,
    }
}

fn group_traces(data: &Data) -> Vec<Trace<'_>> {
    let mut by_trace: HashMap<&str, usize> = HashMap::new();
    let mut traces: Vec<Trace<'_>> = Vec::new();
    let mut spans: Vec<&Span> = data.spans.values().collect();
    spans.sort_by(|a, b| {
        (a.start.is_none(), a.start, &a.span_id).cmp(&(b.start.is_none(), b.start, &b.span_id))
    });
    for span in spans {
        let index = match span.trace_id.as_deref() {
            Some(t) => *by_trace.entry(t).or_insert_with(|| {
                traces.push(new_trace(Some(t)));
                traces.len() - 1
            }),
            None => {
                traces.push(new_trace(None));
                traces.len() - 1
            }
        };
        let Some(trace) = traces.get_mut(index) else {
            continue;
        };
        trace.cpu_nanos += span.profile.cpu_nanos;
        trace.samples += span.profile.samples;
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

fn new_trace(trace_id: Option<&str>) -> Trace<'_> {
    Trace {
        trace_id,
        spans: Vec::new(),
        cpu_nanos: 0,
        samples: 0,
        start: None,
        end: None,
    }
}

fn display_name(name: &str) -> &str {
    if name.is_empty() {
        "(unnamed span)"
    } else {
        name
    }
}

/// Writes flame-graph panels; keeps inferno's script, which every graph
/// shares, to be written once into the page.
struct Flames<'a> {
    stacks: &'a Stacks,
    shared_js: Option<String>,
}

/// What a flame-graph panel is for: `data-{kind}="{key}"` on its iframe,
/// `panel` its element id.
struct PanelFor<'a> {
    kind: &'a str,
    key: &'a str,
    panel: &'a str,
}

impl Flames<'_> {
    /// The "profile" toggle (closing the head row opened by the caller),
    /// `after_head`, then a hidden panel holding a lazily loaded flame graph
    /// iframe.
    fn push_panel(
        &mut self,
        h: &mut String,
        target: &PanelFor<'_>,
        folded: &Folded,
        title: &str,
        after_head: &str,
    ) {
        let PanelFor { kind, key, panel } = target;
        let _ = write!(
            h,
            "<div class=\"num\"><button class=\"toggle\" type=\"button\" aria-expanded=\"false\" \
             aria-controls=\"{panel}\">profile</button></div></div>{after_head}\
             <div class=\"profile\" id=\"{panel}\" hidden>"
        );
        match flame_graph(folded, self.stacks, title) {
            Some((doc, height, js)) if self.shared_js.as_ref().is_none_or(|s| *s == js) => {
                self.shared_js.get_or_insert(js);
                // Single-quoted: the SVG is full of double quotes, so only '&'
                // and '\'' need escaping, which keeps the page small.
                let _ = write!(
                    h,
                    "<iframe class=\"fg\" data-{kind}=\"{key}\" data-srcdoc='{doc}' height=\"{height}\" \
                     title=\"{t}\"></iframe>",
                    key = esc(key),
                    doc = esc_single_quoted(&doc),
                    t = esc(title),
                );
            }
            _ => h.push_str("<p class=\"empty\">Could not draw this flame graph.</p>"),
        }
        h.push_str("</div>");
    }
}

/// Marks where inferno's (identical in every graph) script goes in a
/// flame graph's `srcdoc`; the page holds the script once and puts it back
/// when a graph is opened.
const INFERNO_JS_MARKER: &str = "/*inferno.js*/";

/// An HTML document (for `srcdoc`) holding inferno's interactive SVG with
/// its static script replaced by [`INFERNO_JS_MARKER`], the SVG's height in
/// pixels, and the script taken out.
fn flame_graph(folded: &Folded, stacks: &Stacks, title: &str) -> Option<(String, usize, String)> {
    let lines = folded.lines(stacks);
    if lines.is_empty() {
        return None;
    }
    let mut options = inferno::flamegraph::Options::default();
    options.title = title.to_string();
    options.subtitle = Some(format!(
        "{} samples · CPU {}",
        folded.samples,
        fmt_duration(folded.cpu_nanos)
    ));
    options.count_name = "samples".to_string();
    options.hash = true;
    let mut svg = Vec::new();
    inferno::flamegraph::from_lines(&mut options, lines.iter().map(String::as_str), &mut svg)
        .ok()?;
    let svg = String::from_utf8(svg).ok()?;
    // Drop the XML prolog and doctype: the SVG is inlined into HTML.
    let svg = &svg[svg.find("<svg")?..];
    let height = svg_height(svg).unwrap_or(400);
    // The static script is the CDATA section starting with "use strict".
    let open = "<![CDATA[\"use strict\";";
    let start = svg.find(open)? + "<![CDATA[".len();
    let len = svg[start..].find("]]>")?;
    let js = &svg[start..start + len];
    if js.contains("</") {
        return None; // could not be held in the page's <script> block
    }
    let doc = format!(
        "{SRCDOC_HEAD}{}{INFERNO_JS_MARKER}{}</body></html>",
        &svg[..start],
        &svg[start + len..]
    );
    Some((doc, height, js.to_string()))
}

fn svg_height(svg: &str) -> Option<usize> {
    let open = &svg[..svg.find('>')?];
    let at = open.find(" height=\"")? + " height=\"".len();
    let rest = &open[at..];
    rest[..rest.find('"')?]
        .parse::<f64>()
        .ok()
        .map(|h| h.ceil() as usize)
}

/// Escapes text for a single-quoted attribute value.
fn esc_single_quoted(s: &str) -> String {
    s.replace('&', "&amp;").replace('\'', "&#39;")
}

/// Escapes text for HTML content and attribute values.
pub(super) fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + s.len() / 8);
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn shell_quote(s: &str) -> String {
    let safe = !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/._-+:@,=".contains(&b));
    if safe {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

fn percent(part: u64, total: u64) -> String {
    if total == 0 {
        "–".to_string()
    } else {
        format!("{:.1}%", part as f64 * 100.0 / total as f64)
    }
}

fn fmt_duration(nanos: u64) -> String {
    let n = nanos as f64;
    if nanos == 0 {
        "0 ms".to_string()
    } else if nanos < 1_000_000 {
        format!("{:.0} µs", n / 1e3)
    } else if nanos < 1_000_000_000 {
        format!("{:.1} ms", n / 1e6)
    } else {
        format!("{:.2} s", n / 1e9)
    }
}

fn unix_nanos_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// `YYYY-MM-DD HH:MM:SS.mmm UTC`.
fn fmt_time(unix_nanos: u64) -> String {
    let secs = unix_nanos / 1_000_000_000;
    let millis = (unix_nanos / 1_000_000) % 1000;
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}.{millis:03} UTC",
        rem / 3600,
        (rem / 60) % 60,
        rem % 60
    )
}

/// Days since 1970-01-01 → (year, month, day), proleptic Gregorian.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

const HEAD: &str = "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; img-src data:; frame-src 'self' about:\">\n\
<link rel=\"icon\" href=\"data:,\">\n";

/// Start of each flame graph's `srcdoc` document. An `about:srcdoc` page may
/// not rewrite its URL, so inferno's "keep zoom/search state in the URL"
/// (`history.replaceState`) is turned into a no-op rather than an error.
const SRCDOC_HEAD: &str = "<!DOCTYPE html><html><head><meta charset=\"utf-8\">\
<style>html,body{margin:0;padding:0;background:#fff}svg{display:block;width:100%}</style>\
<script>try{history.replaceState=function(){};}catch(e){}</script></head><body>";

const CSS: &str = r#"
body{font:14px/1.4 system-ui,-apple-system,"Segoe UI",sans-serif;margin:0;color:#1f2328;background:#f6f8fa}
header,section{padding:8px 20px}
h1{font-size:20px;margin:8px 0}h2{font-size:16px;margin:12px 0 6px}
code{font:12px ui-monospace,SFMono-Regular,Menlo,monospace}
.meta,.dim{color:#59636e}.note{background:#fff8c5;border:1px solid #d4a72c;padding:4px 8px;border-radius:4px}
.empty{color:#59636e;font-style:italic}
.controls{display:flex;gap:16px;align-items:center;margin-bottom:8px;flex-wrap:wrap}
input,select,button{font:inherit}
.trace,.service{background:#fff;border:1px solid #d1d9e0;border-radius:6px;margin:6px 0;padding:6px 10px}
.trace-head{margin-bottom:4px}
.service-head,.span-row{display:flex;align-items:center;gap:10px}
.service-head b{flex:0 0 auto}.service-head .dim{flex:1}
.span{border-top:1px solid #eef1f4;padding:3px 0}
.label{flex:0 0 30%;overflow:hidden;text-overflow:ellipsis;white-space:nowrap}
.track{flex:1;position:relative;height:14px;background:#f0f3f6;border-radius:3px}
.bar{position:absolute;top:2px;bottom:2px;background:#4f8fdc;border-radius:2px}
.bar.unknown{background:repeating-linear-gradient(45deg,#c9d1d9,#c9d1d9 4px,#eef1f4 4px,#eef1f4 8px)}
.num{flex:0 0 auto;min-width:90px;text-align:right;font-variant-numeric:tabular-nums}
.ids{font-size:12px;color:#59636e;margin-left:4px}
button.toggle{border:1px solid #d1d9e0;background:#f6f8fa;border-radius:4px;padding:1px 8px;cursor:pointer}
button.toggle[aria-expanded=true]{background:#ddf4ff;border-color:#54aeff}
.profile{margin:6px 0}
iframe.fg{width:100%;border:1px solid #d1d9e0;border-radius:4px;background:#fff}
#files li{margin:2px 0}.skipped{color:#cf222e}
"#;

const JS: &str = r#"
(function () {
  "use strict";
  var MARKER = "/*inferno.js*/";
  var list = document.getElementById("traces");
  var rows = Array.prototype.slice.call(list.children);
  var q = document.getElementById("q");
  var svc = document.getElementById("svc");
  var sort = document.getElementById("sort");
  var shown = document.getElementById("shown");
  function apply() {
    var text = q.value.trim().toLowerCase();
    var service = svc.value;
    var n = 0;
    rows.forEach(function (r) {
      var ok = (!text || r.getAttribute("data-names").indexOf(text) >= 0) &&
        (!service || r.getAttribute("data-services").split("\n").indexOf(service) >= 0);
      r.hidden = !ok;
      if (ok) n++;
    });
    shown.textContent = String(n);
  }
  function resort() {
    var key = "data-" + sort.value;
    rows.sort(function (a, b) {
      return Number(b.getAttribute(key)) - Number(a.getAttribute(key));
    });
    rows.forEach(function (r) { list.appendChild(r); });
  }
  q.addEventListener("input", apply);
  svc.addEventListener("change", apply);
  sort.addEventListener("change", resort);
  document.addEventListener("click", function (e) {
    var b = e.target.closest ? e.target.closest("button.toggle") : null;
    if (!b) return;
    var panel = document.getElementById(b.getAttribute("aria-controls"));
    if (!panel) return;
    var open = panel.hidden;
    panel.hidden = !open;
    b.setAttribute("aria-expanded", open ? "true" : "false");
    var frame = panel.querySelector("iframe[data-srcdoc]");
    if (open && frame && !frame.hasAttribute("srcdoc")) {
      var js = document.getElementById("inferno-js").textContent;
      frame.setAttribute("srcdoc", frame.getAttribute("data-srcdoc").replace(MARKER, function () { return js; }));
    }
  });
})();
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup_and_quotes() {
        assert_eq!(
            esc(r#"<a href="x">'&'</a>"#),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;"
        );
    }

    #[test]
    fn formats_times_and_durations() {
        assert_eq!(fmt_time(0), "1970-01-01 00:00:00.000 UTC");
        // 2024-02-29 12:34:56.789 UTC
        assert_eq!(
            fmt_time(1_709_210_096_789_000_000),
            "2024-02-29 12:34:56.789 UTC"
        );
        assert_eq!(fmt_duration(1_500_000), "1.5 ms");
        assert_eq!(fmt_duration(2_500_000_000), "2.50 s");
        assert_eq!(fmt_duration(0), "0 ms");
    }

    #[test]
    fn quotes_paths_for_the_shell() {
        assert_eq!(shell_quote("/tmp/a-1.pb.gz"), "/tmp/a-1.pb.gz");
        assert_eq!(
            shell_quote("/tmp/it's here.pb.gz"),
            "'/tmp/it'\\''s here.pb.gz'"
        );
    }

    #[test]
    fn reads_the_svg_height() {
        assert_eq!(
            svg_height(r#"<svg version="1.1" height="230" onload="init(evt)">"#),
            Some(230)
        );
        assert_eq!(svg_height("<svg>"), None);
    }
}
