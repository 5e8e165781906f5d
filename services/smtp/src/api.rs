//! The `bitmask.smtp.v1.Smtp` edge: the outgoing queue and submission for
//! clients that do not speak SMTP.

use std::sync::Arc;

use bitmask_proto::smtp::v1 as pb;
use bitmask_proto::smtp::v1::smtp_server::Smtp;
use bitmask_supervisor::config::EncryptionPolicy;
use tonic::{Request, Response, Status};

use crate::queue::State;
use crate::worker::Worker;

#[derive(Debug)]
pub struct SmtpApi {
    worker: Arc<Worker>,
}

impl SmtpApi {
    pub fn new(worker: Arc<Worker>) -> Self {
        Self { worker }
    }
}

fn state_to_pb(state: State) -> pb::QueueState {
    match state {
        State::Queued => pb::QueueState::Queued,
        State::Sending => pb::QueueState::Sending,
        State::Deferred => pb::QueueState::Deferred,
        State::Failed => pb::QueueState::Failed,
        State::Sent => pb::QueueState::Unspecified,
    }
}

fn timestamp(seconds: u64) -> Option<prost_types::Timestamp> {
    (seconds > 0).then_some(prost_types::Timestamp { seconds: seconds as i64, nanos: 0 })
}

/// The subject of a raw message, for the queue listing.
pub fn subject_of(raw: &[u8]) -> String {
    bitmask_mime::parse_headers(raw).and_then(|message| message.subject().map(str::to_owned)).unwrap_or_default()
}

#[tonic::async_trait]
impl Smtp for SmtpApi {
    async fn submit(&self, request: Request<pb::SubmitRequest>) -> Result<Response<pb::SubmitResponse>, Status> {
        let request = request.into_inner();
        let mut recipients: Vec<String> = request.recipients.iter().map(|address| address.to_lowercase()).collect();
        if recipients.is_empty() {
            let prepared = bitmask_smtp::pgpmime::prepare(&request.raw)
                .map_err(|error| Status::invalid_argument(error.to_string()))?;
            recipients = prepared.recipients();
        }
        if recipients.is_empty() {
            return Err(Status::invalid_argument("the message names no recipient"));
        }
        let subject = subject_of(&request.raw);
        let entry = self.worker.queue.enqueue(&self.worker.address, &recipients, request.raw, subject).await?;
        self.worker.wake.notify_one();
        Ok(Response::new(pb::SubmitResponse { queue_id: entry.id }))
    }

    async fn list_queue(
        &self,
        _request: Request<pb::ListQueueRequest>,
    ) -> Result<Response<pb::ListQueueResponse>, Status> {
        let entries = self
            .worker
            .queue
            .entries()
            .await?
            .into_iter()
            .map(|entry| pb::QueueEntry {
                queue_id: entry.id.clone(),
                state: state_to_pb(entry.state()).into(),
                subject: entry.subject.clone(),
                size: entry.size,
                queued_at: timestamp(entry.queued_at),
                attempts: entry.attempts,
                next_attempt: if entry.pending() { timestamp(entry.next_attempt) } else { None },
                last_error: entry.last_error.clone(),
                recipients: entry
                    .recipients
                    .iter()
                    .map(|recipient| pb::QueueRecipient {
                        address: recipient.address.clone(),
                        treatment: recipient.treatment.clone(),
                        state: state_to_pb(recipient.state).into(),
                        last_reply: recipient.last_reply.clone(),
                    })
                    .collect(),
            })
            .collect();
        Ok(Response::new(pb::ListQueueResponse { entries }))
    }

    async fn flush_queue(
        &self,
        _request: Request<pb::FlushQueueRequest>,
    ) -> Result<Response<pb::FlushQueueResponse>, Status> {
        let mut attempted = 0;
        for mut entry in self.worker.queue.entries().await? {
            if entry.pending() {
                entry.next_attempt = 0;
                self.worker.queue.save(&entry).await?;
                attempted += 1;
            }
        }
        self.worker.wake.notify_one();
        Ok(Response::new(pb::FlushQueueResponse { attempted }))
    }

    async fn cancel_queued(
        &self,
        request: Request<pb::CancelQueuedRequest>,
    ) -> Result<Response<pb::CancelQueuedResponse>, Status> {
        let id = request.into_inner().queue_id;
        let entry = self
            .worker
            .queue
            .entries()
            .await?
            .into_iter()
            .find(|entry| entry.id == id)
            .ok_or_else(|| Status::not_found(format!("no queued message {id}")))?;
        self.worker.queue.remove(&entry).await?;
        Ok(Response::new(pb::CancelQueuedResponse {}))
    }

    async fn plan_recipient(
        &self,
        request: Request<pb::PlanRecipientRequest>,
    ) -> Result<Response<pb::PlanRecipientResponse>, Status> {
        let address = request.into_inner().address.to_lowercase();
        let response = match self.worker.key_of(&address).await? {
            Some(key) => pb::PlanRecipientResponse {
                treatment: "encrypt".into(),
                key_fingerprint: key.fingerprint,
                reason: String::new(),
            },
            None if self.worker.policy == EncryptionPolicy::EncryptedOnly => pb::PlanRecipientResponse {
                treatment: "refuse".into(),
                key_fingerprint: String::new(),
                reason: "no OpenPGP key is known and the account sends encrypted mail only".into(),
            },
            None => pb::PlanRecipientResponse {
                treatment: "sign-only".into(),
                key_fingerprint: String::new(),
                reason: "no OpenPGP key is known for this recipient".into(),
            },
        };
        Ok(Response::new(response))
    }
}
