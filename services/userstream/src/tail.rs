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
    let mut messages = consumer.messages().await?;
    let mut seen = 0usize;
    while let Some(message) = messages.next().await {
        let message = message.map_err(|e| anyhow::anyhow!("reading from {}: {e}", args.stream))?;
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
        message.ack().await.map_err(|e| anyhow::anyhow!("ack: {e}"))?;
        seen += 1;
        if args.count.is_some_and(|c| seen >= c) {
            break;
        }
    }
    Ok(())
}
