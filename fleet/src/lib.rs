//! Fleet learning: what many devices learned, merged exactly.
//!
//! Each device of a fleet starts from the same base statistics, learns its
//! own classes, and contributes a [`Summary`]: per class, a count and a
//! mean, and the within-class scatter of the samples it saw, all as
//! sufficient statistics. Summaries add exactly (Chan et al.'s merge for a
//! class taught on several devices), so the fleet head is what one device
//! would hold had it learned every sample itself; and they subtract exactly
//! (Chan's inverse), so a device that took a fleet head and learned more
//! contributes only what it learned since ([`Summary::since`]).
//!
//! The [`Ledger`] keeps the fleet's state: the base, each device's latest
//! contribution keyed by device and generation (a message delivered twice,
//! or an old one after a new one, never counts twice), and fleet-wide
//! forgets. It is sans-IO: a broker client feeds it messages and publishes
//! what it returns, so the same code runs over MQTT and in a unit test, and
//! a merger restarted from the broker's retained messages rebuilds the same
//! state.
//!
//! ```
//! use gaussedge_fleet::{Ledger, Summary};
//! use gaussedge_shared::head::{GaussianHead, HeadConfig};
//! use gaussedge_shared::{label, Estimator, Transform};
//!
//! let config = HeadConfig {
//!     dim: 2,
//!     capacity: 4,
//!     weighting: Estimator::Pooled.weighting(),
//!     settings: Estimator::Pooled.settings(),
//!     transform: Transform::IDENTITY,
//! };
//! let learn = |head: &mut GaussianHead<_>, name: &str, xs: &[[f32; 2]]| {
//!     head.begin(label(name).unwrap()).unwrap();
//!     xs.iter().for_each(|x| { head.learn(x).unwrap(); });
//!     head.commit().unwrap();
//! };
//! let mut base = GaussianHead::with_capacity(config).unwrap();
//! learn(&mut base, "a", &[[0.0, 0.0], [1.0, 0.2], [0.3, 1.0]]);
//! let base_stats = gaussedge_shared::stats::to_vec(&base, &Default::default()).unwrap();
//!
//! // Two devices learn a class each, over the same base.
//! let mut ledger = Ledger::new(&base_stats).unwrap();
//! for (device, name, xs) in [("d1", "b", [[5.0, 5.0], [6.0, 5.5], [5.2, 6.1]]), ("d2", "c", [[-5.0, 4.0], [-6.0, 4.4], [-5.5, 5.1]])] {
//!     let mut head = GaussianHead::from_stats(&base_stats, 4, &Default::default()).unwrap().0;
//!     learn(&mut head, name, &xs);
//!     let mine = Summary::of_head(&head).since(&Summary::of_head(&base)).unwrap();
//!     ledger.contribute(device, 1, &mine.to_bytes(ledger.context())).unwrap();
//! }
//! let fleet = GaussianHead::from_stats(&ledger.head_stats().unwrap(), 4, &Default::default()).unwrap().0;
//! assert_eq!(fleet.class_count(), 3);
//! ```

mod ledger;
pub mod message;
mod summary;

pub use ledger::{Contribution, FleetError, Ledger};
pub use summary::{Context, Piece, Summary, SummaryError};
