//! Leader election over a `coordination.k8s.io/v1` Lease: [`decide`] is the pure
//! rule, [`LeaseClient`] applies it against the API with optimistic concurrency.
//!
//! Every write carries the `resourceVersion` the decision was made on, so of two
//! agents acting on the same Lease one wins and the other gets `409 Conflict` and
//! stands by: the API server is the only arbiter, no clock comparison between agents
//! decides who leads. Clocks matter for expiry only: a Lease counts as expired when
//! `renewTime + leaseDurationSeconds` is past the reader's clock, so agents' clocks
//! must agree to well within a lease duration (NTP does).

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::Api;
use kube::api::PostParams;

/// The annotation holding the shipping leader's resume point (see `super`).
pub const RESUME_ANNOTATION: &str = "logtap.dev/events-resume";

/// What an agent does with the Lease as it finds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// There is no Lease: create it, holding it.
    Create,
    /// It holds the Lease: renew it.
    Renew,
    /// The holder let it expire (or released it): take it, `leaseTransitions` + 1.
    TakeOver,
    /// Another agent holds it and renewed it within its duration.
    StandBy { holder: String },
}

/// The rule: `lease` is the Lease's spec as read (`None`: there is none), `me` this
/// agent's identity, `now` the reader's clock.
pub fn decide(lease: Option<&LeaseSpec>, me: &str, now: Timestamp) -> Decision {
    let Some(spec) = lease else {
        return Decision::Create;
    };
    let holder = spec.holder_identity.as_deref().unwrap_or_default();
    if holder.is_empty() {
        return Decision::TakeOver;
    }
    if holder == me {
        return Decision::Renew;
    }
    let renewed = spec
        .renew_time
        .as_ref()
        .or(spec.acquire_time.as_ref())
        .map(|t| t.0);
    let duration = SignedDuration::from_secs(i64::from(spec.lease_duration_seconds.unwrap_or(0)));
    match renewed.and_then(|r| r.checked_add(duration).ok()) {
        // A Lease without a renewal time cannot be judged fresh: it is taken.
        Some(expiry) if expiry > now => Decision::StandBy {
            holder: holder.to_owned(),
        },
        _ => Decision::TakeOver,
    }
}

/// The outcome of one [`LeaseClient::attempt`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// This agent holds the Lease until at least `duration` from now. `resume` is the
    /// point found in the Lease (the previous leader's, or this agent's own).
    Leading {
        acquired: bool,
        resume: Option<Timestamp>,
    },
    StandBy,
}

/// One Lease, as one agent acts on it.
pub struct LeaseClient {
    pub api: Api<Lease>,
    pub name: String,
    pub identity: String,
    pub duration_seconds: i32,
}

impl LeaseClient {
    /// Reads the Lease, decides, and writes: creates, renews or takes it over (with
    /// `resume` as the annotation when given; the Lease's own is kept otherwise), or
    /// stands by. A `409 Conflict` means another agent wrote first: stand by.
    pub async fn attempt(&self, resume: Option<Timestamp>) -> Result<Outcome, kube::Error> {
        let current = self.api.get_opt(&self.name).await?;
        let now = Timestamp::now();
        let decision = decide(
            current.as_ref().and_then(|l| l.spec.as_ref()),
            &self.identity,
            now,
        );
        let found_resume = current.as_ref().and_then(resume_of);
        let mut lease = match decision {
            Decision::StandBy { .. } => return Ok(Outcome::StandBy),
            Decision::Create => Lease {
                metadata: ObjectMeta {
                    name: Some(self.name.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(LeaseSpec {
                    acquire_time: Some(MicroTime(now)),
                    lease_transitions: Some(0),
                    ..LeaseSpec::default()
                }),
            },
            Decision::Renew | Decision::TakeOver => current.clone().unwrap_or_default(),
        };
        let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
        spec.holder_identity = Some(self.identity.clone());
        spec.lease_duration_seconds = Some(self.duration_seconds);
        spec.renew_time = Some(MicroTime(now));
        if decision == Decision::TakeOver {
            spec.acquire_time = Some(MicroTime(now));
            spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
        }
        if let Some(point) = resume {
            set_resume(&mut lease, point);
        }
        let written = match decision {
            Decision::Create => self.api.create(&PostParams::default(), &lease).await,
            _ => {
                self.api
                    .replace(&self.name, &PostParams::default(), &lease)
                    .await
            }
        };
        match written {
            Ok(_) => Ok(Outcome::Leading {
                acquired: decision != Decision::Renew,
                resume: found_resume,
            }),
            Err(kube::Error::Api(status)) if status.code == 409 => Ok(Outcome::StandBy),
            Err(e) => Err(e),
        }
    }
}

impl LeaseClient {
    /// Gives the Lease up (no holder, so the next agent to look takes it over at
    /// once) when this agent still holds it, writing `resume` as its point; whether it
    /// did. A `409 Conflict` means another agent wrote first: nothing to give up.
    pub async fn release(&self, resume: Option<Timestamp>) -> Result<bool, kube::Error> {
        let Some(mut lease) = self.api.get_opt(&self.name).await? else {
            return Ok(false);
        };
        let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
        if spec.holder_identity.as_deref() != Some(self.identity.as_str()) {
            return Ok(false);
        }
        spec.holder_identity = None;
        if let Some(point) = resume {
            set_resume(&mut lease, point);
        }
        match self
            .api
            .replace(&self.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(status)) if status.code == 409 => Ok(false),
            Err(e) => Err(e),
        }
    }
}

/// Writes `point` as the Lease's resume point (read back by [`resume_of`]).
fn set_resume(lease: &mut Lease, point: Timestamp) {
    lease
        .metadata
        .annotations
        .get_or_insert_with(Default::default)
        .insert(RESUME_ANNOTATION.into(), point.to_string());
}

/// The resume point a Lease carries; an unreadable one counts as none (everything
/// listed is shipped: duplicates, never a loss).
pub fn resume_of(lease: &Lease) -> Option<Timestamp> {
    let text = lease
        .metadata
        .annotations
        .as_ref()?
        .get(RESUME_ANNOTATION)?;
    match text.parse() {
        Ok(t) => Some(t),
        Err(e) => {
            tracing::warn!(annotation = RESUME_ANNOTATION, value = %text, error = %e, "unreadable events resume point: shipping every listed event");
            None
        }
    }
}
