//! The wire format of the Push call: Pyroscope's `PushRequest`, its series
//! labels and the gzipped request body.

use std::io::Write;

use prost::Message;

/// The path of the Push call, appended to the server address.
pub(crate) const PUSH_PATH: &str = "/push.v1.PusherService/Push";

/// `PushRequest` and friends from Pyroscope's `push/v1/push.proto` and
/// `types/v1/types.proto`, written out by hand.
pub(crate) mod proto {
    /// The Push call's request.
    #[derive(Clone, PartialEq, prost::Message)]
    pub(crate) struct PushRequest {
        #[prost(message, repeated, tag = "1")]
        pub(crate) series: Vec<RawProfileSeries>,
    }

    /// One series: its labels and profiles.
    #[derive(Clone, PartialEq, prost::Message)]
    pub(crate) struct RawProfileSeries {
        #[prost(message, repeated, tag = "1")]
        pub(crate) labels: Vec<LabelPair>,
        #[prost(message, repeated, tag = "2")]
        pub(crate) samples: Vec<RawSample>,
    }

    /// A series label.
    #[derive(Clone, PartialEq, prost::Message)]
    pub(crate) struct LabelPair {
        #[prost(string, tag = "1")]
        pub(crate) name: String,
        #[prost(string, tag = "2")]
        pub(crate) value: String,
    }

    /// One pprof profile (gzipped or not) and a unique id.
    #[derive(Clone, PartialEq, prost::Message)]
    pub(crate) struct RawSample {
        #[prost(bytes = "vec", tag = "1")]
        pub(crate) raw_profile: Vec<u8>,
        #[prost(string, tag = "2")]
        pub(crate) id: String,
    }
}

/// `__name__`, `service_name`, `process.runtime.name`, then the static
/// labels (validated before they get here).
pub(super) fn series_labels(
    service_name: &str,
    labels: &[(String, String)],
) -> Vec<proto::LabelPair> {
    let pair = |name: &str, value: &str| proto::LabelPair {
        name: name.to_string(),
        value: value.to_string(),
    };
    let mut out = vec![
        pair("__name__", "process_cpu"),
        pair("service_name", service_name),
        pair("process.runtime.name", "rust"),
    ];
    out.extend(labels.iter().map(|(k, v)| pair(k, v)));
    out
}

/// Sets the series' `__name__` (the profile type's name).
pub(super) fn set_profile_name(labels: &mut [proto::LabelPair], name: &str) {
    if let Some(pair) = labels.iter_mut().find(|p| p.name == "__name__") {
        pair.value = name.to_string();
    }
}

/// The gzipped `PushRequest` carrying one gzipped pprof `raw_profile`.
pub(super) fn push_body(
    labels: &[proto::LabelPair],
    raw_profile: Vec<u8>,
    id: String,
) -> std::io::Result<Vec<u8>> {
    let request = proto::PushRequest {
        series: vec![proto::RawProfileSeries {
            labels: labels.to_vec(),
            samples: vec![proto::RawSample { raw_profile, id }],
        }],
    };
    let encoded = request.encode_to_vec();
    drop(request);
    // The pprof inside is gzipped already: compress the envelope fast.
    let mut gz = flate2::write::GzEncoder::new(
        Vec::with_capacity(encoded.len() / 2 + 64),
        flate2::Compression::fast(),
    );
    gz.write_all(&encoded)?;
    gz.finish()
}

/// The server's JSON `message`, else the body text (truncated).
pub(super) fn server_message(body: &[u8]) -> String {
    #[derive(serde::Deserialize)]
    struct ErrorBody {
        message: String,
    }
    if let Ok(e) = serde_json::from_slice::<ErrorBody>(body) {
        return e.message;
    }
    let text = String::from_utf8_lossy(body);
    text.chars().take(512).collect()
}
