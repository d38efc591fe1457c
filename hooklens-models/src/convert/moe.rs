//! What the mixture-of-experts families (Mixtral, Qwen3-MoE, OLMoE) share: the
//! expert counts of `config.json`, and each layer's router and experts read from
//! per-expert tensors (`{experts}.{e}.{gate,up,down}.weight`, Hugging Face `Linear`
//! layout `[out, in]`).

use hooklens_core::Result;

use super::hf_config::HfConfig;
use super::weights::linear_weight;
use crate::config::TransformerConfig;
use crate::loading::TensorSource;
use crate::params::{ExpertWeights, MoeWeights};

/// The fields every mixture-of-experts family reads about its experts (each names
/// its expert count one way or the other).
pub(super) const MOE_FIELDS: &[&str] = &[
    "num_experts",
    "num_local_experts",
    "num_experts_per_tok",
    "norm_topk_prob",
];
/// Where a family keeps its mixture of experts, relative to `model.layers.{i}.`.
pub(super) struct ExpertNames {
    /// The router `[n_experts, d_model]` (without `.weight`).
    pub(super) router: &'static str,
    /// The folder of the experts: `{experts}.{e}.{gate}.weight`, ...
    pub(super) experts: &'static str,
    /// The gate projection `[d_mlp, d_model]` (before the activation).
    pub(super) gate: &'static str,
    /// The up projection `[d_mlp, d_model]`.
    pub(super) up: &'static str,
    /// The down projection `[d_model, d_mlp]`.
    pub(super) down: &'static str,
}

/// Sets the mixture of experts of `cfg` from `config.json`: the expert count from the
/// first of `count_fields` present (else `default_count`), `num_experts_per_tok`
/// (else `default_k`), `norm_topk_prob` (else `default_norm`). The expert width is
/// `cfg.d_mlp`, which the caller sets.
pub(super) fn set_experts(
    hf: &HfConfig,
    cfg: &mut TransformerConfig,
    count_fields: &[&str],
    default_count: usize,
    default_k: usize,
    default_norm: bool,
) -> Result<()> {
    let mut count = None;
    for field in count_fields {
        if let Some(n) = hf.opt_usize(field)? {
            count = Some(n);
            break;
        }
    }
    let n_experts = count.unwrap_or(default_count);
    let k = hf.opt_usize("num_experts_per_tok")?.unwrap_or(default_k);
    if k > n_experts {
        return Err(hf.bad(format!(
            "field `num_experts_per_tok` ({k}) is larger than the number of experts ({n_experts})"
        )));
    }
    cfg.num_experts = Some(n_experts);
    cfg.experts_per_token = Some(k);
    cfg.norm_topk_prob = hf.bool_or("norm_topk_prob", default_norm)?;
    Ok(())
}

/// Every layer's router and experts, as `names` places them.
pub(super) fn read_experts(
    src: &dyn TensorSource,
    cfg: &TransformerConfig,
    names: &ExpertNames,
) -> Result<Vec<MoeWeights>> {
    let (d, m) = (cfg.d_model, cfg.d_mlp);
    let n_experts = cfg.num_experts.unwrap_or(0);
    (0..cfg.n_layers)
        .map(|i| {
            let p = format!("model.layers.{i}");
            let w_router = linear_weight(src, &format!("{p}.{}.weight", names.router), n_experts, d)?;
            let experts = (0..n_experts)
                .map(|e| {
                    let q = format!("{p}.{}.{e}", names.experts);
                    Ok(ExpertWeights {
                        w_gate: linear_weight(src, &format!("{q}.{}.weight", names.gate), m, d)?,
                        w_in: linear_weight(src, &format!("{q}.{}.weight", names.up), m, d)?,
                        w_out: linear_weight(src, &format!("{q}.{}.weight", names.down), d, m)?,
                        b_gate: None,
                        b_in: None,
                        b_out: None,
                    })
                })
                .collect::<Result<_>>()?;
            Ok(MoeWeights {
                w_router,
                b_router: None,
                experts,
            })
        })
        .collect()
}
