//! kiln runs untrusted code-generation jobs: a job's repository is cloned on the host, an agent
//! changes it inside a fresh locked-down container, the tests run in another, a failed run is fed
//! back for up to `max_attempts`, and the passing change is committed on a `factory/*` branch.
//!
//! The flow, module by module: [`job`] parses and checks the job file; [`workspace`] clones the
//! repository and turns trees into tar streams and back (all path handling lives there);
//! [`sandbox`] runs one container with every default locked down; [`run`] drives the attempts and
//! writes artifacts and the report; [`images`] builds the images kiln uses from nothing.

pub mod artifacts;
pub mod audit;
pub mod bench;
pub mod config;
pub mod context;
pub mod egress;
pub mod error;
pub mod escalation;
pub mod images;
pub mod job;
pub mod model;
pub mod notify;
pub mod policy;
pub mod publish;
pub mod report;
pub mod review;
pub mod run;
pub mod sandbox;
pub mod scheduler;
pub mod secrets;
pub mod serve;
pub mod store;
pub mod telemetry;
pub mod workspace;

pub use error::Error;
pub use model::ExitCode;
