//! Processes that train one model together (docs/SCALING.md): each computes an aligned
//! block of a step's shards, the blocks' gradients are summed up the same fixed tree as
//! in one process, and every process applies the same update. [`Peers`] is what the
//! training loop needs of them; with the `mpi` cargo feature, [`Mpi`] provides it over
//! Open MPI (`mpirun -np K kiln train …`).

/// The processes of a data-parallel run, numbered `0..size()`; process 0 leads (prints,
/// evaluates, writes the checkpoint). Every call is matched by the peer it names, and
/// every process makes the same broadcasts in the same order. A peer that dies ends
/// the job (Open MPI's default error handler aborts every process): no call returns
/// an error.
pub trait Peers: Send {
    /// This process's number.
    fn rank(&self) -> usize;
    /// How many processes there are.
    fn size(&self) -> usize;
    /// Sends `data` to process `to`, which receives it with [`Peers::receive`]; `tag`
    /// tells a step's messages apart.
    fn send(&self, to: usize, tag: u16, data: &[f32]);
    /// Receives what process `from` sent with the same `tag` into `data` (the same length).
    fn receive(&self, from: usize, tag: u16, data: &mut [f32]);
    /// Process 0's `data`, on every process.
    fn broadcast(&self, data: &mut [f32]);

    /// Process 0's `value` (a decision), on every process.
    fn agree(&self, value: u8) -> u8 {
        let mut v = [f32::from(value)];
        self.broadcast(&mut v);
        v[0] as u8
    }
}

impl<P: Peers + Sync + ?Sized> Peers for std::sync::Arc<P> {
    fn rank(&self) -> usize {
        (**self).rank()
    }
    fn size(&self) -> usize {
        (**self).size()
    }
    fn send(&self, to: usize, tag: u16, data: &[f32]) {
        (**self).send(to, tag, data)
    }
    fn receive(&self, from: usize, tag: u16, data: &mut [f32]) {
        (**self).receive(from, tag, data)
    }
    fn broadcast(&self, data: &mut [f32]) {
        (**self).broadcast(data)
    }
}

/// The shards of `shards` that process `rank` of `size` computes: an aligned block of
/// consecutive shards (`shards` is a multiple of `size` when both are powers of two).
pub fn block(rank: usize, size: usize, shards: usize) -> std::ops::Range<usize> {
    rank * shards / size..(rank + 1) * shards / size
}

/// The process that computes shard `k` of `shards` when there are `size` processes.
pub fn owner(k: usize, size: usize, shards: usize) -> usize {
    // The largest rank whose block starts at or before `k`.
    (0..size)
        .rev()
        .find(|&r| block(r, size, shards).start <= k)
        .unwrap_or(0)
}

/// How many processes of this job run on this machine, as the launcher says (Open MPI's
/// `OMPI_COMM_WORLD_LOCAL_SIZE`, MPICH's `MPI_LOCALNRANKS`); 1 outside one. The default
/// thread count divides the cores among them.
pub fn local_processes() -> usize {
    ["OMPI_COMM_WORLD_LOCAL_SIZE", "MPI_LOCALNRANKS"]
        .iter()
        .find_map(|k| std::env::var(k).ok()?.parse::<usize>().ok())
        .unwrap_or(1)
        .max(1)
}

#[cfg(feature = "mpi")]
pub use self::mpi_peers::Mpi;

#[cfg(feature = "mpi")]
mod mpi_peers {
    use super::Peers;
    use mpi::environment::Universe;
    use mpi::topology::SimpleCommunicator;
    use mpi::traits::{Communicator, Destination, Root, Source};

    /// The processes `mpirun` started, over Open MPI.
    pub struct Mpi {
        /// Finalizes MPI when dropped; kept for that.
        _universe: Universe,
    }

    impl Mpi {
        /// MPI, when this process was started by an MPI launcher (`mpirun`, `srun`);
        /// None otherwise (a plain `kiln train` initializes nothing).
        pub fn launched() -> Option<Mpi> {
            let launched = ["OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK"]
                .iter()
                .any(|k| std::env::var_os(k).is_some());
            if !launched {
                return None;
            }
            // One thread at a time talks to MPI (the shards' threads never do).
            let (universe, _) = mpi::initialize_with_threading(mpi::Threading::Serialized)?;
            Some(Mpi {
                _universe: universe,
            })
        }

        /// The job's processes (a handle, not a resource: made for each call).
        fn world(&self) -> SimpleCommunicator {
            SimpleCommunicator::world()
        }

        /// Ends every process of the job with exit code `code` (after an error on this
        /// one, so that no other waits for it forever).
        pub fn abort(&self, code: i32) -> ! {
            self.world().abort(code)
        }
    }

    impl Peers for Mpi {
        fn rank(&self) -> usize {
            usize::try_from(self.world().rank()).unwrap_or(0)
        }

        fn size(&self) -> usize {
            usize::try_from(self.world().size()).unwrap_or(1)
        }

        fn send(&self, to: usize, tag: u16, data: &[f32]) {
            self.world()
                .process_at_rank(rank(to))
                .send_with_tag(data, i32::from(tag));
        }

        fn receive(&self, from: usize, tag: u16, data: &mut [f32]) {
            self.world()
                .process_at_rank(rank(from))
                .receive_into_with_tag(data, i32::from(tag));
        }

        fn broadcast(&self, data: &mut [f32]) {
            self.world().process_at_rank(0).broadcast_into(data);
        }
    }

    /// A rank number as MPI takes it (a job has far fewer than 2^31 processes).
    fn rank(r: usize) -> i32 {
        i32::try_from(r).unwrap_or(i32::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_cover_the_shards_in_order() {
        assert_eq!(block(0, 2, 2), 0..1);
        assert_eq!(block(1, 2, 8), 4..8);
        assert_eq!(block(2, 3, 4), 2..4);
        let owners: Vec<_> = (0..8).map(|k| owner(k, 4, 8)).collect();
        assert_eq!(owners, [0, 0, 1, 1, 2, 2, 3, 3]);
        let owners: Vec<_> = (0..4).map(|k| owner(k, 3, 4)).collect();
        assert_eq!(owners, [0, 1, 2, 2]);
    }
}
