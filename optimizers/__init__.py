"""Optimizers as optax GradientTransformations, exact to the published update rules."""

from optimizers.rules.adaptive.adadelta import ScaleByAdadeltaState, adadelta, scale_by_adadelta
from optimizers.rules.factored.adafactor import (ClipByBlockRmsState, ScaleByFactoredRmsState,
                                                 ScaleByParamBlockRmsState, ScaleByRelativeStepState, adafactor,
                                                 clip_by_block_rms, scale_by_factored_rms, scale_by_param_block_rms,
                                                 scale_by_relative_step)
from optimizers.rules.adaptive.adagrad import ScaleByRssState, adagrad, scale_by_rss
from optimizers.rules.adaptive.adam import (ScaleByAdamState, ScaleByAdamaxState, ScaleByAmsgradState, adam, adamax,
                                            adamaxw, adamw, amsgrad, scale_by_adam, scale_by_adamax, scale_by_amsgrad)
from optimizers.rules.lr_free.schedule_free_aliases import (ScaleByScheduleFreeAdamState, scale_by_schedule_free_adam,
                                                            schedule_free_adamw, schedule_free_sgd)
from optimizers.rules.lr_free.schedule_free import ScheduleFreeState, schedule_free, schedule_free_eval_params
from optimizers.rules.adaptive.adax import ScaleByAdaxState, adax, scale_by_adax
from optimizers.rules.adaptive.amos import ScaleByAmosState, amos, scale_by_amos
from optimizers.wrappers.averaging import (WeightEmaState, SwaState, averaged_params, weight_ema,
                                           recompute_batch_stats, swa)
from optimizers.wrappers.sam import SAMState, normalize, sam
from optimizers.rules.adaptive.belief import ScaleByBeliefState, adabelief, scale_by_belief
from optimizers.rules.lr_free.dadapt_adamw import ScaleByDadaptAdamwState, dadapt_adamw, scale_by_dadapt_adamw
from optimizers.rules.lr_free.dadapt_sgd import ScaleByDadaptSgdState, dadapt_sgd, scale_by_dadapt_sgd
from optimizers.rules.lr_free.dadapt_adagrad import (ScaleByDadaptAdagradState, dadapt_adagrad,
                                                     scale_by_dadapt_adagrad)
from optimizers.wrappers.data_echoing import data_echoing
from optimizers.contract.dtypes import with_state_dtype
from optimizers.rules.lr_free.dog import ScaleByDogState, dog, scale_by_dog, ScaleByDowgState, dowg, scale_by_dowg
from optimizers.rules.quasi_newton.lbfgs import ScaleByLbfgsState, lbfgs, scale_by_lbfgs
from optimizers.rules.quasi_newton.torch_lbfgs import TorchLbfgsState, torch_lbfgs
from optimizers.rules.quasi_newton.linesearch import (BacktrackingLinesearchInfo, ScaleByBacktrackingLinesearchState,
                                                      ScaleByZoomLinesearchState, ZoomLinesearchInfo,
                                                      scale_by_backtracking_linesearch, scale_by_zoom_linesearch)
from optimizers.rules.momentum.asgd import AsgdState, asgd, asgd_averaged_params
from optimizers.rules.momentum.ema import ScaleByEmaState, EmaState, ema, scale_by_ema
from optimizers.contract.backend import update_and_apply
from optimizers.rules.momentum.funnelled_sgdm import (ScaleByFunnelledSgdmState, funnelled_sgdm,
                                                      scale_by_funnelled_sgdm)
from optimizers.estimators.gradient_free import (GradientlessDescent, GradientlessDescentState,
                                                 forward_value_and_grad, gradientless_descent,
                                                 zeroth_order_value_and_grad)
from optimizers.contract.hyperparams import get_hyperparams, set_hyperparams
from optimizers.contract.layers import layer_axes_from_flax
from optimizers.contract.registry import register_nonnegative
from optimizers.rules.momentum.lion import ScaleByLionState, lion, scale_by_lion
from optimizers.wrappers.cautious import CautiousState, cautious
from optimizers.wrappers.lookahead import LookaheadState, lookahead, slow_params
from optimizers.rules.momentum.momentum import TraceState, sgd, trace
from optimizers.rules.matrix.muon import ScaleByMuonState, muon, scale_by_muon
from optimizers.rules.matrix.normuon import normuon
from optimizers.rules.matrix.newton_schulz import orthogonalize
from optimizers.rules.matrix.shampoo import ScaleByShampooState, scale_by_shampoo, shampoo
from optimizers.rules.matrix.soap import ScaleBySoapState, SoapState, scale_by_soap, soap
from optimizers.rules.adaptive.nadam import ScaleByNadamState, nadam, nadamw, scale_by_nadam
from optimizers.wrappers.nonfinite import ApplyIfFiniteState, apply_if_finite, check_finite
from optimizers.rules.layerwise.novograd import ScaleByNovogradState, novograd, scale_by_novograd
from optimizers.wrappers.plateau import ReduceOnPlateauState, reduce_on_plateau
from optimizers.rules.lr_free.prodigy import ScaleByProdigyState, prodigy, scale_by_prodigy
from optimizers.wrappers.quantized.codes import QuantizedBuffer, dequantized
from optimizers.wrappers.quantized.wrapper import with_quantized_state
from optimizers.rules.adaptive.radam import ScaleByRadamState, radam, scale_by_radam
from optimizers.rules.adaptive.rmsprop import ScaleByRmsState, rmsprop, scale_by_rms
from optimizers.rules.momentum.rprop import ScaleByRpropState, rprop, scale_by_rprop
from optimizers.rules.scaling import (AddDecayedWeightsState, ScaleByLearningRateState, add_decayed_weights,
                                      scale_by_learning_rate)
from optimizers.rules.factored.sm3 import ScaleBySm3State, scale_by_sm3, sm3
from optimizers.rules.layerwise.trust_ratio import (ScaleByLarsState, ScaleByTrustRatioState, lamb, lars,
                                                    scale_by_lars, scale_by_trust_ratio)
from optimizers.checkpoint import check_compatible, from_bytes, restore, save, to_bytes
from optimizers.sharding import bytes_per_device, fit_sharding, fsdp_shardings, state_shardings
from optimizers.rules.adaptive.adopt import ScaleByAdoptState, adopt, scale_by_adopt
from optimizers.rules.adaptive.ademamix import (ScaleByAdemamixState, ScaleBySimplifiedAdemamixState, ademamix,
                                                alpha_scheduler, beta3_scheduler, scale_by_ademamix,
                                                scale_by_simplified_ademamix, simplified_ademamix)
from optimizers.rules.adaptive.madgrad import MadgradState, madgrad, scale_by_madgrad
from optimizers.rules.adaptive.acprop import ScaleByAcpropState, acprop, scale_by_acprop
from optimizers.rules.adaptive.yogi import ScaleByYogiState, scale_by_yogi, yogi
from optimizers.rules.layerwise.fromage import FromageState, fromage
from optimizers.rules.momentum.noise import AddNoiseState, add_noise, noisy_sgd
from optimizers.rules.momentum.optimistic import (ScaleByOptimisticGradientState, optimistic_adam, optimistic_adam_v2,
                                                  optimistic_gradient_descent, scale_by_optimistic_gradient)
from optimizers.rules.lr_free.polyak import ScaleByPolyakState, polyak_sgd, scale_by_polyak
from optimizers.rules.adaptive.sophia import (HutchinsonState, SophiaState, hutchinson_estimator_diag_hessian,
                                              scale_by_sophia, sophia)
from optimizers.rules.momentum.sign import ScaleBySignumState, scale_by_sign, scale_by_signum, sign_sgd, signum
from optimizers.rules.adaptive.adan import ScaleByAdanState, adan, scale_by_adan

# The public names (every import above is one), sorted.
__all__ = [
    "AddDecayedWeightsState", "AddNoiseState", "ApplyIfFiniteState", "AsgdState", "BacktrackingLinesearchInfo",
    "CautiousState", "ClipByBlockRmsState", "EmaState", "FromageState", "GradientlessDescent",
    "GradientlessDescentState", "HutchinsonState", "LookaheadState", "MadgradState", "QuantizedBuffer",
    "ReduceOnPlateauState", "SAMState", "ScaleByAcpropState", "ScaleByAdadeltaState", "ScaleByAdamState",
    "ScaleByAdamaxState", "ScaleByAdanState", "ScaleByAdaxState", "ScaleByAdemamixState", "ScaleByAdoptState",
    "ScaleByAmosState", "ScaleByAmsgradState", "ScaleByBacktrackingLinesearchState", "ScaleByBeliefState",
    "ScaleByDadaptAdagradState", "ScaleByDadaptAdamwState", "ScaleByDadaptSgdState", "ScaleByDogState",
    "ScaleByDowgState", "ScaleByEmaState", "ScaleByFactoredRmsState", "ScaleByFunnelledSgdmState", "ScaleByLarsState",
    "ScaleByLbfgsState", "ScaleByLearningRateState", "ScaleByLionState", "ScaleByMuonState", "ScaleByNadamState",
    "ScaleByNovogradState", "ScaleByOptimisticGradientState", "ScaleByParamBlockRmsState", "ScaleByPolyakState",
    "ScaleByProdigyState", "ScaleByRadamState", "ScaleByRelativeStepState", "ScaleByRmsState", "ScaleByRpropState",
    "ScaleByRssState", "ScaleByScheduleFreeAdamState", "ScaleByShampooState", "ScaleBySignumState",
    "ScaleBySimplifiedAdemamixState", "ScaleBySm3State", "ScaleBySoapState", "ScaleByTrustRatioState",
    "ScaleByYogiState", "ScaleByZoomLinesearchState", "ScheduleFreeState", "SoapState", "SophiaState", "SwaState",
    "TorchLbfgsState", "TraceState", "WeightEmaState", "ZoomLinesearchInfo", "acprop", "adabelief", "adadelta",
    "adafactor", "adagrad", "adam", "adamax", "adamaxw", "adamw", "adan", "adax", "add_decayed_weights", "add_noise",
    "ademamix", "adopt", "alpha_scheduler", "amos", "amsgrad", "apply_if_finite", "asgd", "asgd_averaged_params",
    "averaged_params", "beta3_scheduler", "bytes_per_device", "cautious", "check_compatible", "check_finite",
    "clip_by_block_rms", "dadapt_adagrad", "dadapt_adamw", "dadapt_sgd", "data_echoing", "dequantized", "dog", "dowg",
    "ema", "fit_sharding", "forward_value_and_grad", "from_bytes", "fromage", "fsdp_shardings", "funnelled_sgdm",
    "get_hyperparams", "gradientless_descent", "hutchinson_estimator_diag_hessian", "lamb", "lars",
    "layer_axes_from_flax", "lbfgs", "lion", "lookahead", "madgrad", "muon", "nadam", "nadamw", "noisy_sgd",
    "normalize", "normuon", "novograd", "optimistic_adam", "optimistic_adam_v2", "optimistic_gradient_descent",
    "orthogonalize", "polyak_sgd", "prodigy", "radam", "recompute_batch_stats", "reduce_on_plateau",
    "register_nonnegative", "restore", "rmsprop", "rprop", "sam", "save", "scale_by_acprop", "scale_by_adadelta",
    "scale_by_adam", "scale_by_adamax", "scale_by_adan", "scale_by_adax", "scale_by_ademamix", "scale_by_adopt",
    "scale_by_amos", "scale_by_amsgrad", "scale_by_backtracking_linesearch", "scale_by_belief",
    "scale_by_dadapt_adagrad", "scale_by_dadapt_adamw", "scale_by_dadapt_sgd", "scale_by_dog", "scale_by_dowg",
    "scale_by_ema", "scale_by_factored_rms", "scale_by_funnelled_sgdm", "scale_by_lars", "scale_by_lbfgs",
    "scale_by_learning_rate", "scale_by_lion", "scale_by_madgrad", "scale_by_muon", "scale_by_nadam",
    "scale_by_novograd", "scale_by_optimistic_gradient", "scale_by_param_block_rms", "scale_by_polyak",
    "scale_by_prodigy", "scale_by_radam", "scale_by_relative_step", "scale_by_rms", "scale_by_rprop", "scale_by_rss",
    "scale_by_schedule_free_adam", "scale_by_shampoo", "scale_by_sign", "scale_by_signum",
    "scale_by_simplified_ademamix", "scale_by_sm3", "scale_by_soap", "scale_by_sophia", "scale_by_trust_ratio",
    "scale_by_yogi", "scale_by_zoom_linesearch", "schedule_free", "schedule_free_adamw", "schedule_free_eval_params",
    "schedule_free_sgd", "set_hyperparams", "sgd", "shampoo", "sign_sgd", "signum", "simplified_ademamix",
    "slow_params", "sm3", "soap", "sophia", "state_shardings", "swa", "to_bytes", "torch_lbfgs", "trace",
    "update_and_apply", "weight_ema", "with_quantized_state", "with_state_dtype", "yogi",
    "zeroth_order_value_and_grad",
]
