//! The ingest load generator's HTTP/1.1 client: one keep-alive connection, one request at a
//! time, like wrk.
//!
//! The load generator shares the machine with the system it measures, so it must cost little:
//! the request head is formatted once per connection, the body is written into a reused
//! buffer, each request is one `write` and the answer is read into a reused buffer and parsed
//! only as far as the status, `Content-Length` and the body. (hyper's client cost about
//! 20 CPU-µs per request here, as much as the front it was measuring.)

use std::io;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Longest answer head accepted.
const MAX_HEAD: usize = 16 * 1024;
/// Longest answer body accepted.
const MAX_BODY: usize = 1024 * 1024;

/// One keep-alive connection posting JSON to one path.
pub struct LoadConnection {
    stream: TcpStream,
    /// `POST {path} HTTP/1.1` and the fixed headers, up to `Content-Length: `.
    head: Vec<u8>,
    out: Vec<u8>,
    body: Vec<u8>,
    buf: Vec<u8>,
}

/// What the front answered.
#[derive(Debug, PartialEq, Eq)]
pub struct Answer<'a> {
    /// The HTTP status.
    pub status: u16,
    /// The body.
    pub body: &'a [u8],
    /// The server will close the connection after this answer (`connection: close`).
    pub close: bool,
}

fn malformed(what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("malformed answer: {what}"),
    )
}

impl LoadConnection {
    /// Connects to `authority` (`host:port`) for posts to `path` with `authorization`.
    pub async fn connect(authority: &str, path: &str, authorization: &str) -> io::Result<Self> {
        let stream = TcpStream::connect(authority).await?;
        stream.set_nodelay(true)?;
        let head = format!(
            "POST {path} HTTP/1.1\r\nhost: {authority}\r\nauthorization: {authorization}\r\n\
             content-type: application/json\r\ncontent-length: "
        )
        .into_bytes();
        Ok(LoadConnection {
            stream,
            head,
            out: Vec::with_capacity(512),
            body: Vec::with_capacity(256),
            buf: Vec::with_capacity(4096),
        })
    }

    /// Posts the body that `write_body` writes and reads the whole answer.
    pub async fn post(&mut self, write_body: impl FnOnce(&mut Vec<u8>)) -> io::Result<Answer<'_>> {
        use std::io::Write as _;
        self.body.clear();
        write_body(&mut self.body);
        self.out.clear();
        self.out.extend_from_slice(&self.head);
        write!(self.out, "{}\r\n\r\n", self.body.len())?;
        self.out.extend_from_slice(&self.body);
        self.stream.write_all(&self.out).await?;
        self.read_answer().await
    }

    async fn read_answer(&mut self) -> io::Result<Answer<'_>> {
        self.buf.clear();
        let Head {
            len: head_len,
            status,
            content_length,
            close,
        } = loop {
            if let Some(parsed) = parse_head(&self.buf)? {
                break parsed;
            }
            if self.buf.len() > MAX_HEAD {
                return Err(malformed("head too long"));
            }
            self.fill().await?;
        };
        if content_length > MAX_BODY {
            return Err(malformed("body too long"));
        }
        while self.buf.len() < head_len + content_length {
            self.fill().await?;
        }
        Ok(Answer {
            status,
            body: &self.buf[head_len..head_len + content_length],
            close,
        })
    }

    async fn fill(&mut self) -> io::Result<()> {
        self.buf.reserve(4096);
        let read = self.stream.read_buf(&mut self.buf).await?;
        if read == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        Ok(())
    }
}

/// What the head of an answer says.
#[derive(Debug, PartialEq, Eq)]
struct Head {
    /// Bytes up to and including the blank line.
    len: usize,
    status: u16,
    content_length: usize,
    /// `connection: close`.
    close: bool,
}

/// The head of an answer, once the whole head is in `buf`.
fn parse_head(buf: &[u8]) -> io::Result<Option<Head>> {
    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        return Ok(None);
    };
    let head = std::str::from_utf8(&buf[..end]).map_err(|_| malformed("head is not utf-8"))?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| malformed("status line"))?;
    let mut content_length = None;
    let mut close = false;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            return Err(malformed("header line"));
        };
        if name.eq_ignore_ascii_case("content-length") {
            content_length = Some(
                value
                    .trim()
                    .parse()
                    .map_err(|_| malformed("content-length"))?,
            );
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(malformed("chunked bodies are not read"));
        } else if name.eq_ignore_ascii_case("connection") {
            close = value.trim().eq_ignore_ascii_case("close");
        }
    }
    let content_length = content_length.ok_or_else(|| malformed("no content-length"))?;
    Ok(Some(Head {
        len: end + 4,
        status,
        content_length,
        close,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads_are_read_once_complete() {
        let answer = b"HTTP/1.1 202 Accepted\r\ncontent-type: application/json\r\nContent-Length: 7\r\n\r\n{\"a\":1}";
        assert_eq!(parse_head(&answer[..20]).unwrap(), None);
        let head = parse_head(answer).unwrap().unwrap();
        assert_eq!(
            (head.status, head.content_length, head.close),
            (202, 7, false)
        );
        assert_eq!(&answer[head.len..], b"{\"a\":1}");
        let closing =
            b"HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\ncontent-length: 0\r\n\r\n";
        assert!(parse_head(closing).unwrap().unwrap().close);
        assert!(parse_head(b"HTTP/1.1 200 OK\r\n\r\n").is_err(), "no length");
        assert!(parse_head(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n").is_err());
        assert!(parse_head(b"SPDY 200\r\ncontent-length: 0\r\n\r\n").is_err());
    }

    #[tokio::test]
    async fn a_post_reads_the_whole_answer_over_several_reads() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let server = tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut request = Vec::new();
            for answer in [
                &b"HTTP/1.1 202 Accepted\r\ncontent-le"[..],
                b"ngth: 5\r\n\r\nab",
                b"cde",
            ] {
                let mut chunk = [0u8; 1024];
                if request.is_empty() {
                    let n = socket.read(&mut chunk).await.unwrap();
                    request.extend_from_slice(&chunk[..n]);
                }
                socket.write_all(answer).await.unwrap();
                socket.flush().await.unwrap();
                tokio::task::yield_now().await;
            }
            String::from_utf8(request).unwrap()
        });
        let mut connection = LoadConnection::connect(&addr, "/v1/x", "Bearer k")
            .await
            .unwrap();
        let answer = connection
            .post(|body| body.extend_from_slice(b"{}"))
            .await
            .unwrap();
        assert_eq!(
            answer,
            Answer {
                status: 202,
                body: b"abcde",
                close: false
            }
        );
        let request = server.await.unwrap();
        assert!(request.starts_with("POST /v1/x HTTP/1.1\r\n"), "{request}");
        assert!(request.contains("authorization: Bearer k\r\n"));
        assert!(
            request.ends_with("content-length: 2\r\n\r\n{}"),
            "{request}"
        );
    }
}
