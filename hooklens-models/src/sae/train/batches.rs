//! Where training reads its activations ([`ActivationSource`]: a harvest's shards or a
//! model run over a corpus) and the seeded shuffling buffer that serves them in batches
//! ([`Batches`]), as SAELens's activation store mixes its buffer.

use candle_core::{Device, Tensor};
use hooklens_core::{Error, Result};

use super::activations::HarvestActivations;
use super::model_source::ModelActivations;
use super::rng::Rng;
use crate::corpus::CorpusSequences;

/// Where [`train`](super::train) reads its activations: a harvest's shards or a model
/// run over a corpus.
#[derive(Clone, Copy, Debug)]
pub enum ActivationSource<'a> {
    /// Shards `hooklens harvest` wrote.
    Harvest(&'a HarvestActivations),
    /// Computed on the fly.
    Model(&'a ModelActivations),
}

impl<'a> From<&'a HarvestActivations> for ActivationSource<'a> {
    fn from(src: &'a HarvestActivations) -> Self {
        ActivationSource::Harvest(src)
    }
}

impl<'a> From<&'a ModelActivations> for ActivationSource<'a> {
    fn from(src: &'a ModelActivations) -> Self {
        ActivationSource::Model(src)
    }
}

impl<'a> ActivationSource<'a> {
    /// The hook point (a transcoder's input).
    pub fn hook(&self) -> &'a str {
        match *self {
            ActivationSource::Harvest(s) => s.hook(),
            ActivationSource::Model(s) => s.hook(),
        }
    }

    /// The activations' width (a transcoder's input width).
    pub fn d_in(&self) -> usize {
        match *self {
            ActivationSource::Harvest(s) => s.d_in(),
            ActivationSource::Model(s) => s.d_in(),
        }
    }

    /// A transcoder's target hook point and its width.
    pub fn hook_out(&self) -> Option<(&'a str, usize)> {
        match *self {
            ActivationSource::Harvest(s) => s.hook_out(),
            ActivationSource::Model(s) => s.hook_out(),
        }
    }

    /// Seeded batches, as [`HarvestActivations::batches`] serves them.
    pub(crate) fn batches(&self, batch_size: usize, n_batches_in_buffer: usize, seed: u64) -> Result<Batches<'a>> {
        match *self {
            ActivationSource::Harvest(s) => Ok(s.batches(batch_size, n_batches_in_buffer, seed)),
            ActivationSource::Model(s) => Batches::from_model(s, batch_size, n_batches_in_buffer, seed),
        }
    }
}

impl HarvestActivations {
    /// Batches of `batch_size` activations `[batch_size, d_in]` (f32; a transcoder's
    /// `[batch_size, d_in + d_out]`, input then target), shuffled through
    /// a buffer of `n_batches_in_buffer` batches of which half is served after each
    /// shuffle, as SAELens's activation store mixes its buffer. The shards are read
    /// again from the start when exhausted. The sequence is fixed by `seed`.
    pub(crate) fn batches(&self, batch_size: usize, n_batches_in_buffer: usize, seed: u64) -> Batches<'_> {
        Batches::new(
            Feed::Shards { src: self, next: 0 },
            self.row_width(),
            batch_size,
            n_batches_in_buffer,
            seed,
        )
    }
}

/// Where [`Batches`] gets its rows, a chunk at a time.
enum Feed<'a> {
    /// A harvest's shards, a shard at a time, from the first again after the last.
    Shards { src: &'a HarvestActivations, next: usize },
    /// A model over a corpus, a forward pass at a time, from the corpus's start again
    /// after its end.
    Model {
        src: &'a ModelActivations,
        seqs: Box<CorpusSequences<'a>>,
        /// Sequences made in the current pass.
        in_pass: usize,
        /// Sequences in one pass, once a pass has ended.
        per_pass: Option<usize>,
    },
}

impl Feed<'_> {
    /// The next rows, `row_width` values each (none for a shard without rows).
    fn next_chunk(&mut self) -> Result<Vec<f32>> {
        match self {
            Feed::Shards { src, next } => {
                let rows = src.load_shard(*next)?;
                *next = (*next + 1) % src.shard_count();
                Ok(rows)
            }
            Feed::Model {
                src,
                seqs,
                in_pass,
                per_pass,
            } => {
                let ctx = src.context_size();
                let mut tokens = Vec::with_capacity(src.sequences_per_forward() * ctx);
                while tokens.len() < src.sequences_per_forward() * ctx {
                    match seqs.next_sequence()? {
                        Some(s) => {
                            tokens.extend(s);
                            *in_pass += 1;
                        }
                        // A batch never straddles two passes, so every pass is batched alike.
                        None if !tokens.is_empty() => break,
                        None => {
                            if *in_pass == 0 {
                                return Err(Error::invalid(format!(
                                    "{}: not one sequence of {ctx} tokens in it",
                                    src.corpus().path.display()
                                )));
                            }
                            if per_pass.is_none() {
                                *per_pass = Some(*in_pass);
                            }
                            *in_pass = 0;
                            seqs.restart()?;
                        }
                    }
                }
                src.rows(tokens)
            }
        }
    }
}

/// The batch iterator of [`HarvestActivations::batches`] (and of a model's activations).
pub(crate) struct Batches<'a> {
    feed: Feed<'a>,
    row_width: usize,
    rng: Rng,
    batch_size: usize,
    capacity: usize,
    current: Vec<f32>,
    cursor: usize,
    /// Activations waiting to be mixed, `row_width` values each.
    buffer: Vec<f32>,
    /// Shuffled activations being served.
    ready: Vec<f32>,
    ready_pos: usize,
}

impl<'a> Batches<'a> {
    fn new(feed: Feed<'a>, row_width: usize, batch_size: usize, n_batches_in_buffer: usize, seed: u64) -> Self {
        Batches {
            feed,
            row_width,
            rng: Rng::new(seed ^ 0x5348_5546_464c_4531),
            batch_size,
            capacity: batch_size * n_batches_in_buffer.max(2),
            current: Vec::new(),
            cursor: 0,
            buffer: Vec::new(),
            ready: Vec::new(),
            ready_pos: 0,
        }
    }

    /// Batches of `src`'s activations, shuffled as a harvest's are.
    pub(crate) fn from_model(
        src: &'a ModelActivations,
        batch_size: usize,
        n_batches_in_buffer: usize,
        seed: u64,
    ) -> Result<Self> {
        let feed = Feed::Model {
            src,
            seqs: Box::new(src.sequences()?),
            in_pass: 0,
            per_pass: None,
        };
        let width = src.d_in() + src.hook_out().map_or(0, |(_, d)| d);
        Ok(Batches::new(feed, width, batch_size, n_batches_in_buffer, seed))
    }

    /// With a model's activations: the tokens of one pass over the corpus, once the
    /// corpus has been read to its end (and started again).
    pub(crate) fn tokens_per_pass(&self) -> Option<u64> {
        match &self.feed {
            Feed::Model { src, per_pass, .. } => per_pass.map(|n| (n * src.context_size()) as u64),
            Feed::Shards { .. } => None,
        }
    }

    /// The next batch `[batch_size, d_in]` (a transcoder's `[batch_size, d_in + d_out]`).
    pub(crate) fn next_batch(&mut self) -> Result<Tensor> {
        let d = self.row_width;
        let want = self.batch_size * d;
        let mut out = Vec::with_capacity(want);
        while out.len() < want {
            if self.ready_pos == self.ready.len() {
                self.refill()?;
            }
            let take = (want - out.len()).min(self.ready.len() - self.ready_pos);
            out.extend_from_slice(&self.ready[self.ready_pos..self.ready_pos + take]);
            self.ready_pos += take;
        }
        Ok(Tensor::from_vec(out, (self.batch_size, d), &Device::Cpu)?)
    }

    /// Fills the buffer from the shards, shuffles it and moves its first half out to be
    /// served.
    fn refill(&mut self) -> Result<()> {
        let d = self.row_width;
        while self.buffer.len() < self.capacity * d {
            if self.cursor == self.current.len() {
                self.current = self.feed.next_chunk()?;
                self.cursor = 0;
                continue;
            }
            let take = (self.capacity * d - self.buffer.len()).min(self.current.len() - self.cursor);
            self.buffer
                .extend_from_slice(&self.current[self.cursor..self.cursor + take]);
            self.cursor += take;
        }
        let n = self.buffer.len() / d;
        for i in (1..n).rev() {
            let j = self.rng.below(i + 1);
            if i != j {
                for c in 0..d {
                    self.buffer.swap(i * d + c, j * d + c);
                }
            }
        }
        let half = n / 2;
        self.ready = self.buffer.drain(..half * d).collect();
        self.ready_pos = 0;
        Ok(())
    }
}
