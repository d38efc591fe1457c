//! Loading checkpoints: safetensors files read tensor by tensor (one file, or the
//! shards of a `model.safetensors.index.json`; f32, f16 or bf16, and u8 for packed
//! quantised weights), and the Hugging Face hub.

mod bounded;
mod checkpoint;
pub mod hub;
mod known_fields;
mod safetensors;
mod sharded;
mod used_tensors;

pub(crate) use bounded::{read_bounded, MAX_CONFIG_BYTES};
pub(crate) use checkpoint::{open_checkpoint, open_checkpoint_file, read_dtype, SHARD_INDEX};
pub(crate) use known_fields::KnownFields;
pub(crate) use safetensors::{SafetensorsFile, TensorSource};
pub(crate) use sharded::ShardIndex;
pub(crate) use used_tensors::UsedTensors;
