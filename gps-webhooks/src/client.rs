//! The HTTP side of a delivery: a reqwest client whose DNS resolver applies the URL policy
//! (so the connection goes only to the addresses just checked: a name that resolves to a
//! refused address at delivery time, DNS rebinding included, is never connected to), no
//! redirects, no proxy, connect and total timeouts; and one POST whose response is read up to a
//! cap.

use crate::config::WebhookArgs;
use crate::policy::{Refusal, UrlPolicy};
use crate::signing;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use reqwest::header::{HeaderValue, CONTENT_TYPE, USER_AGENT};
use std::error::Error as StdError;
use std::net::SocketAddr;
use std::sync::Arc;
use uuid::Uuid;

/// Resolves host names with the system resolver and keeps only the addresses the policy
/// allows; none left is a [`Refusal`] (found again in the request's error chain). The client
/// connects to what this returns, so the check and the connection see the same addresses.
#[derive(Debug)]
struct PolicyResolver {
    policy: UrlPolicy,
}

impl Resolve for PolicyResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let policy = self.policy.clone();
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let found: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let ips: Vec<_> = found.iter().map(SocketAddr::ip).collect();
            let allowed = policy.check_resolved(&host, &ips)?;
            let addrs: Addrs = Box::new(allowed.into_iter().map(|ip| SocketAddr::new(ip, 0)));
            Ok(addrs)
        })
    }
}

/// The client every delivery of a worker uses.
#[derive(Debug, Clone)]
pub struct Sender {
    client: reqwest::Client,
    policy: UrlPolicy,
    max_response_bytes: u64,
}

/// What one attempt came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempt {
    /// The receiver's status, when it answered.
    pub status: Option<u16>,
    /// `None` when delivered (2xx), else a short reason without secrets.
    pub error: Option<String>,
}

impl Attempt {
    fn failed(status: Option<u16>, error: impl Into<String>) -> Self {
        Self {
            status,
            error: Some(error.into()),
        }
    }
}

/// One signed request.
#[derive(Debug)]
pub struct Outgoing<'a> {
    /// The webhook's URL.
    pub url: &'a str,
    /// The webhook's secret.
    pub secret: &'a str,
    /// The event's id (the receiver's idempotency key).
    pub event_id: Uuid,
    /// The event's type.
    pub event_type: &'a str,
    /// The delivery row's id.
    pub delivery_id: i64,
    /// The JSON body.
    pub body: Vec<u8>,
}

impl Sender {
    /// A client with `args`' timeouts and response cap, under `args`' URL policy.
    pub fn new(args: &WebhookArgs) -> Result<Self, reqwest::Error> {
        let policy = args.urls.policy();
        let client = reqwest::Client::builder()
            .dns_resolver(Arc::new(PolicyResolver {
                policy: policy.clone(),
            }))
            // A redirect is an answer (not 2xx, so a failure), never a second request
            // somewhere the policy did not check; a proxy would resolve names itself.
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .connect_timeout(args.connect_timeout())
            .timeout(args.timeout())
            .build()?;
        Ok(Self {
            client,
            policy,
            max_response_bytes: args.max_response_bytes,
        })
    }

    /// POST `out` signed at `timestamp` (Unix seconds): 2xx is delivered, anything else (a
    /// refused URL, no connection, a timeout, another status) a failed attempt.
    pub async fn send(&self, out: Outgoing<'_>, timestamp: i64) -> Attempt {
        // IP literals never reach the resolver: checked here. Names: by the resolver.
        if let Err(refusal) = self.policy.check_url(out.url) {
            return Attempt::failed(None, format!("refused: {refusal}"));
        }
        let signature = signing::signature(out.secret, timestamp, &out.body);
        let request = self
            .client
            .post(out.url)
            .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
            .header(
                USER_AGENT,
                HeaderValue::from_static("gps-telemetry-webhooks/1"),
            )
            .header(signing::TIMESTAMP_HEADER, timestamp)
            .header(signing::SIGNATURE_HEADER, signature)
            .header(signing::EVENT_ID_HEADER, out.event_id.to_string())
            .header(signing::EVENT_TYPE_HEADER, out.event_type)
            .header(signing::DELIVERY_HEADER, out.delivery_id)
            .body(out.body);
        let mut response = match request.send().await {
            Ok(response) => response,
            Err(e) => return Attempt::failed(None, describe(&e)),
        };
        let status = response.status();
        // Read at most the cap (for the connection's reuse), whatever the receiver sends.
        let mut read = 0u64;
        while read < self.max_response_bytes {
            match response.chunk().await {
                Ok(Some(chunk)) => read += chunk.len() as u64,
                Ok(None) => break,
                Err(e) if status.is_success() => {
                    tracing::debug!(error = %e, "webhook response body cut short");
                    break;
                }
                Err(e) => return Attempt::failed(Some(status.as_u16()), describe(&e)),
            }
        }
        if status.is_success() {
            Attempt {
                status: Some(status.as_u16()),
                error: None,
            }
        } else {
            Attempt::failed(
                Some(status.as_u16()),
                format!("receiver answered {}", status.as_u16()),
            )
        }
    }
}

/// A short reason for a request that failed, without the URL (it may carry a token in its
/// query): a refusal by the policy, a timeout, a connection failure.
fn describe(e: &reqwest::Error) -> String {
    let mut source: Option<&(dyn StdError + 'static)> = Some(e);
    while let Some(err) = source {
        if let Some(refusal) = err.downcast_ref::<Refusal>() {
            return format!("refused: {refusal}");
        }
        source = err.source();
    }
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "connection failed"
    } else if e.is_body() || e.is_decode() {
        "response failed"
    } else {
        "request failed"
    };
    // The innermost cause names what happened (refused, reset, dns) without the URL.
    let mut cause = None;
    let mut source = e.source();
    while let Some(err) = source {
        cause = Some(err.to_string());
        source = err.source();
    }
    match cause {
        Some(cause) => truncate(&format!("{kind}: {cause}"), 300),
        None => kind.to_owned(),
    }
}

/// At most `max` bytes of `s`, cut at a character boundary.
pub(crate) fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_owned()
}
