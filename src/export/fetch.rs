//! Reading a node's records back out of the stream, for checking them away from the node
//! (`autonomy audit verify --from nats://…`).

use std::time::Duration;

use futures::StreamExt;

use super::ExportError;

/// Most records read back in one go (the verifier holds them all).
pub const MAX_RECORDS: usize = 10_000_000;

/// Every message on `subject` in `stream`, in stream order: each payload as published (a record
/// as the WAL stores it). Gives up after `bound`.
pub async fn fetch(
    servers: &str,
    stream: &str,
    subject: &str,
    bound: Duration,
) -> Result<Vec<Vec<u8>>, ExportError> {
    let err = |what: &str, e: &dyn std::fmt::Display| {
        ExportError::Config(format!(
            "reading {subject} from stream {stream}: {what}: {e}"
        ))
    };
    let read = async {
        let client = async_nats::ConnectOptions::new()
            .connection_timeout(Duration::from_secs(5))
            .connect(servers)
            .await
            .map_err(|e| err("cannot connect", &e))?;
        let js = async_nats::jetstream::new(client);
        let st = js
            .get_stream(stream)
            .await
            .map_err(|e| err("no such stream", &e))?;
        // The last message now: what is published after this is not waited for.
        let last = match st.get_last_raw_message_by_subject(subject).await {
            Ok(m) => m.sequence,
            Err(_) => return Ok(Vec::new()),
        };
        let consumer = st
            .create_consumer(async_nats::jetstream::consumer::pull::OrderedConfig {
                filter_subject: subject.to_string(),
                ..Default::default()
            })
            .await
            .map_err(|e| err("cannot make a consumer", &e))?;
        let mut msgs = consumer
            .messages()
            .await
            .map_err(|e| err("cannot read", &e))?;
        let mut out = Vec::new();
        while let Some(m) = msgs.next().await {
            let m = m.map_err(|e| err("cannot read", &e))?;
            let sseq = m
                .info()
                .map_err(|e| err("bad message", &e))?
                .stream_sequence;
            out.push(m.payload.to_vec());
            if sseq >= last || out.len() >= MAX_RECORDS {
                break;
            }
        }
        Ok(out)
    };
    tokio::time::timeout(bound, read).await.map_err(|_| {
        err(
            "timed out",
            &format!("not done within {} s", bound.as_secs()),
        )
    })?
}
