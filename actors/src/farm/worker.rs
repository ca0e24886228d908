//! A farm worker's side: the dispatch entry that `#[actor(batches(M))]` puts in the actor's
//! table for [`Batch<M>`].

use crate::actor::ProcessHandler;
use crate::context::ProcessContext;
use crate::dispatch::{catching, decode, encode_reply, Delivery, Outcome};
use crate::farm::Batch;
use crate::message::RemoteMessage;
use ensemble_runtime::wire::Failure;
use std::os::fd::OwnedFd;

/// The entry for a [`Batch<M>`] of an actor with a [`ProcessHandler<M>`]: each task runs on
/// its own, a panic fails only its task.
///
/// # Errors
/// A [`Failure`] when the batch does not decode.
pub fn batch_entry<A, M>(
    state: &mut A,
    body: &[u8],
    fds: Vec<OwnedFd>,
    ctx: &mut ProcessContext<A>,
    delivery: Delivery,
) -> Outcome
where
    A: ProcessHandler<M>,
    M: RemoteMessage,
{
    let batch = decode::<A, Batch<M>>(body, fds, ctx, delivery)?;
    let results: Vec<Result<M::Result, Failure>> =
        batch.tasks.into_iter().map(|task| catching(|| state.handle(task, ctx))).collect();
    encode_reply::<A, Batch<M>>(ctx, delivery.id, &results)
}
