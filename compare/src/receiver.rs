//! A tiny Pyroscope on loopback: accepts `push.v1.PusherService/Push` over
//! HTTP/1.1 (keep-alive, `Content-Length` or chunked bodies, gzip or not)
//! and writes every profile it carries to `BASE/<prefix>/<n>.pb.gz`, where
//! `<prefix>` is the request path before `/push.v1.PusherService/Push`.
//! Each arm uploads to its own prefix.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use prost::Message;
use pyroscope::encode::gen::push::PushRequest;

const PUSH: &str = "/push.v1.PusherService/Push";

/// Starts the receiver; returns its base URL (`http://127.0.0.1:PORT`).
pub fn start(base: &Path) -> std::io::Result<String> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let url = format!("http://{}", listener.local_addr()?);
    let base = base.to_path_buf();
    let seq = Arc::new(AtomicU64::new(0));
    std::thread::Builder::new()
        .name("receiver".into())
        .spawn(move || {
            for stream in listener.incoming().flatten() {
                let (base, seq) = (base.clone(), seq.clone());
                std::thread::spawn(move || {
                    let _ = serve(stream, &base, &seq);
                });
            }
        })?;
    Ok(url)
}

fn serve(stream: TcpStream, base: &Path, seq: &AtomicU64) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut out = stream;
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line)? == 0 {
            return Ok(());
        }
        let path = request_line
            .split_whitespace()
            .nth(1)
            .unwrap_or("")
            .to_string();
        let (mut length, mut chunked, mut gzip) = (0usize, false, false);
        loop {
            let mut line = String::new();
            reader.read_line(&mut line)?;
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            let Some((k, v)) = line.split_once(':') else {
                continue;
            };
            let (k, v) = (k.trim().to_ascii_lowercase(), v.trim().to_ascii_lowercase());
            match k.as_str() {
                "content-length" => length = v.parse().unwrap_or(0),
                "transfer-encoding" => chunked = v.contains("chunked"),
                "content-encoding" => gzip = v.contains("gzip"),
                _ => {}
            }
        }
        let body = if chunked {
            read_chunked(&mut reader)?
        } else {
            let mut b = vec![0; length];
            reader.read_exact(&mut b)?;
            b
        };
        let status = match path.strip_suffix(PUSH) {
            Some(prefix) => match store(base, prefix, &body, gzip, seq) {
                Ok(()) => "200 OK",
                Err(_) => "400 Bad Request",
            },
            None => "404 Not Found",
        };
        write!(
            out,
            "HTTP/1.1 {status}\r\nContent-Type: application/proto\r\nContent-Length: 0\r\n\r\n"
        )?;
        out.flush()?;
    }
}

fn read_chunked(reader: &mut impl BufRead) -> std::io::Result<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let mut size = String::new();
        reader.read_line(&mut size)?;
        let n = usize::from_str_radix(size.trim().split(';').next().unwrap_or("0"), 16)
            .map_err(std::io::Error::other)?;
        let mut chunk = vec![0; n + 2];
        reader.read_exact(&mut chunk)?;
        if n == 0 {
            return Ok(body);
        }
        body.extend_from_slice(&chunk[..n]);
    }
}

fn gunzip(bytes: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(bytes).read_to_end(&mut out)?;
    Ok(out)
}

fn store(
    base: &Path,
    prefix: &str,
    body: &[u8],
    gzip: bool,
    seq: &AtomicU64,
) -> std::io::Result<()> {
    let body = if gzip || body.starts_with(&[0x1f, 0x8b]) {
        gunzip(body)?
    } else {
        body.to_vec()
    };
    let request = PushRequest::decode(&body[..]).map_err(std::io::Error::other)?;
    let dir: PathBuf = base.join(prefix.trim_matches('/'));
    std::fs::create_dir_all(&dir)?;
    for series in request.series {
        for sample in series.samples {
            let n = seq.fetch_add(1, Ordering::Relaxed);
            // pprof reads gzipped and plain profiles alike.
            std::fs::write(dir.join(format!("{n:06}.pb.gz")), &sample.raw_profile)?;
        }
    }
    Ok(())
}
