//! Background work: one loop per job, started with the server and stopped with it. Each loop
//! owns its schedule and logs its own failures; none of them answers a request.

mod sweeper;

use tokio::task::JoinHandle;

use crate::service::auth_profiles::AuthProfiles;
use crate::service::sessions::Sessions;

/// The running background loops.
#[derive(Debug)]
pub struct Workers {
    handles: Vec<JoinHandle<()>>,
}

impl Workers {
    /// Starts every background loop.
    pub fn start(sessions: Sessions, auth_profiles: AuthProfiles) -> Self {
        Self { handles: vec![tokio::spawn(sweeper::run(sessions, auth_profiles))] }
    }

    /// Stops them (at shutdown, after the server has finished its requests).
    pub fn stop(self) {
        for handle in self.handles {
            handle.abort();
        }
    }
}
