//! `userstream tail`: an example subscriber. Follows the JetStream stream the
//! relay publishes to through a durable pull consumer, prints each event as
//! one JSON line and acks it, so a restarted tail resumes where it stopped.

use anyhow::Context as _;
use async_nats::jetstream::{self, consumer::pull};
use futures_util::StreamExt;

#[derive(clap::Args)]
pub struct TailArgs {
    /// The NATS server the relay publishes to.
    #[arg(long = "nats", env = "NATS_URL")]
    url: String,
    #[arg(long = "nats-stream", env = "NATS_STREAM", default_value = "USERSTREAM")]
    stream: String,
    /// The durable consumer's name: a tail with the same name resumes where the last one stopped.
    #[arg(long, default_value = "userstream-tail")]
    durable: String,
    /// Only these subjects, e.g. `userstream.1.app1.user.>` (default: the whole stream).
    #[arg(long, default_value = "")]
    subject: String,
    /// Stop after this many events (default: follow forever).
    #[arg(long)]
    count: Option<usize>,
}

/// Prints the event as one JSON line, then acks it and waits for the server
/// to confirm, so a tail that stops right after never sees it again.
async fn print_and_ack(message: async_nats::jetstream::Message) -> anyhow::Result<()> {
    let event: serde_json::Value = serde_json::from_slice(&message.payload).unwrap_or_default();
    let line = serde_json::json!({
        "subject": message.subject.as_str(),
        "position": event["position"],
        "event_id": event["event_id"],
        "stream": event["stream"],
        "version": event["version"],
        "type": event["type"],
        "occurred_at": event["occurred_at"],
    });
    println!("{line}");
    message.double_ack().await.map_err(|e| anyhow::anyhow!("ack: {e}"))
}

pub async fn run(args: TailArgs) -> anyhow::Result<()> {
    let client = async_nats::connect(args.url.as_str()).await.with_context(|| format!("connecting to {}", args.url))?;
    let js = jetstream::new(client);
    let stream = js.get_stream(&args.stream).await.with_context(|| format!("no stream {}", args.stream))?;
    let consumer: jetstream::consumer::PullConsumer = stream
        .get_or_create_consumer(
            &args.durable,
            pull::Config {
                durable_name: Some(args.durable.clone()),
                filter_subject: args.subject.clone(),
                ack_policy: jetstream::consumer::AckPolicy::Explicit,
                ..Default::default()
            },
        )
        .await
        .context("creating the durable consumer")?;
    match args.count {
        // Follow: a continuous pull.
        None => {
            let mut messages = consumer.messages().await?;
            while let Some(message) = messages.next().await {
                print_and_ack(message.map_err(|e| anyhow::anyhow!("reading from {}: {e}", args.stream))?).await?;
            }
        }
        // Exactly `count` events: pull only as many as are still wanted, so
        // none is left delivered-but-unacked for the next tail to wait for.
        Some(count) => {
            let mut seen = 0usize;
            while seen < count {
                let mut batch = consumer
                    .batch()
                    .max_messages((count - seen).min(500))
                    .expires(std::time::Duration::from_secs(5))
                    .messages()
                    .await
                    .map_err(|e| anyhow::anyhow!("reading from {}: {e}", args.stream))?;
                while let Some(message) = batch.next().await {
                    print_and_ack(message.map_err(|e| anyhow::anyhow!("reading from {}: {e}", args.stream))?).await?;
                    seen += 1;
                }
            }
        }
    }
    Ok(())
}
