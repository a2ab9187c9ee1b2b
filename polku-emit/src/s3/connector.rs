//! The S3 client's HTTP: object_store's requests sent with the workspace's
//! reqwest (one HTTP and TLS stack in the binary), and transport errors
//! sorted the way object_store's own connector sorts them, so that its
//! retries behave the same (a refused connection is retried; a timeout only
//! for a request that may be sent twice).

use async_trait::async_trait;
use http_body_util::BodyExt as _;
use object_store::ClientOptions;
use object_store::client::{
    HttpClient, HttpConnector, HttpError, HttpErrorKind, HttpRequest, HttpResponse,
    HttpResponseBody, HttpService,
};

/// object_store's HTTP over the gateway's reqwest client: for another
/// object_store client (one that reads what the S3 emitter wrote, say) on
/// the same HTTP and TLS stack as the emitter.
///
/// ```no_run
/// use object_store::aws::AmazonS3Builder;
/// use polku_emit::S3HttpConnector;
///
/// let store = AmazonS3Builder::from_env()
///     .with_bucket_name("my-events")
///     .with_http_connector(S3HttpConnector::new(reqwest::Client::new()))
///     .build()
///     .unwrap();
/// # drop(store);
/// ```
#[derive(Debug, Clone)]
pub struct S3HttpConnector(reqwest::Client);

impl S3HttpConnector {
    /// A connector sending with `client` (its timeouts apply: object_store's
    /// `ClientOptions` do not).
    pub fn new(client: reqwest::Client) -> Self {
        S3HttpConnector(client)
    }
}

#[async_trait]
impl HttpService for S3HttpConnector {
    async fn call(&self, req: HttpRequest) -> Result<HttpResponse, HttpError> {
        let (parts, body) = req.into_parts();
        let req = http::Request::from_parts(parts, reqwest::Body::wrap(body));
        let req = reqwest::Request::try_from(req)
            .map_err(|e| HttpError::new(HttpErrorKind::Unknown, e))?;
        let res = self.0.execute(req).await.map_err(transport_error)?;
        let (parts, body) = http::Response::<reqwest::Body>::from(res).into_parts();
        Ok(HttpResponse::from_parts(
            parts,
            HttpResponseBody::new(body.map_err(transport_error)),
        ))
    }
}

impl HttpConnector for S3HttpConnector {
    fn connect(&self, _options: &ClientOptions) -> object_store::Result<HttpClient> {
        Ok(HttpClient::new(self.clone()))
    }
}

/// What kind of failure a reqwest error is, for object_store's retries.
fn transport_error(e: reqwest::Error) -> HttpError {
    let mut kind = if e.is_timeout() {
        HttpErrorKind::Timeout
    } else if e.is_connect() {
        HttpErrorKind::Connect
    } else if e.is_decode() {
        HttpErrorKind::Decode
    } else {
        HttpErrorKind::Unknown
    };
    let mut source = std::error::Error::source(&e);
    while kind == HttpErrorKind::Unknown {
        let Some(s) = source else { break };
        if let Some(h) = s.downcast_ref::<hyper::Error>() {
            if h.is_closed() || h.is_incomplete_message() || h.is_body_write_aborted() {
                kind = HttpErrorKind::Request;
            } else if h.is_timeout() {
                kind = HttpErrorKind::Timeout;
            }
        }
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            use std::io::ErrorKind as K;
            match io.kind() {
                K::TimedOut => kind = HttpErrorKind::Timeout,
                K::ConnectionAborted | K::ConnectionReset | K::BrokenPipe | K::UnexpectedEof => {
                    kind = HttpErrorKind::Interrupted;
                }
                _ => {}
            }
        }
        source = s.source();
    }
    HttpError::new(kind, e)
}
