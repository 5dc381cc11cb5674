"""Optimizers as optax GradientTransformations, exact to the published update rules."""

from optimizers.rules.adaptive.adadelta import ScaleByAdadeltaState as ScaleByAdadeltaState
from optimizers.rules.adaptive.adadelta import adadelta as adadelta
from optimizers.rules.adaptive.adadelta import scale_by_adadelta as scale_by_adadelta
from optimizers.rules.factored.adafactor import ClipByBlockRmsState as ClipByBlockRmsState
from optimizers.rules.factored.adafactor import ScaleByFactoredRmsState as ScaleByFactoredRmsState
from optimizers.rules.factored.adafactor import ScaleByParamBlockRmsState as ScaleByParamBlockRmsState
from optimizers.rules.factored.adafactor import ScaleByRelativeStepState as ScaleByRelativeStepState
from optimizers.rules.factored.adafactor import adafactor as adafactor
from optimizers.rules.factored.adafactor import clip_by_block_rms as clip_by_block_rms
from optimizers.rules.factored.adafactor import scale_by_factored_rms as scale_by_factored_rms
from optimizers.rules.factored.adafactor import scale_by_param_block_rms as scale_by_param_block_rms
from optimizers.rules.factored.adafactor import scale_by_relative_step as scale_by_relative_step
from optimizers.rules.adaptive.adagrad import ScaleByRssState as ScaleByRssState
from optimizers.rules.adaptive.adagrad import adagrad as adagrad
from optimizers.rules.adaptive.adagrad import scale_by_rss as scale_by_rss
from optimizers.rules.adaptive.adam import ScaleByAdamState as ScaleByAdamState
from optimizers.rules.lr_free.schedule_free import ScaleByScheduleFreeAdamState as ScaleByScheduleFreeAdamState
from optimizers.rules.lr_free.schedule_free import ScheduleFreeState as ScheduleFreeState
from optimizers.rules.lr_free.schedule_free import scale_by_schedule_free_adam as scale_by_schedule_free_adam
from optimizers.rules.lr_free.schedule_free import schedule_free as schedule_free
from optimizers.rules.lr_free.schedule_free import schedule_free_adamw as schedule_free_adamw
from optimizers.rules.lr_free.schedule_free import schedule_free_eval_params as schedule_free_eval_params
from optimizers.rules.lr_free.schedule_free import schedule_free_sgd as schedule_free_sgd
from optimizers.rules.adaptive.adam import ScaleByAdamaxState as ScaleByAdamaxState
from optimizers.rules.adaptive.adam import ScaleByAmsgradState as ScaleByAmsgradState
from optimizers.rules.adaptive.adam import adam as adam
from optimizers.rules.adaptive.adam import adamax as adamax
from optimizers.rules.adaptive.adam import adamaxw as adamaxw
from optimizers.rules.adaptive.adam import adamw as adamw
from optimizers.rules.adaptive.adam import amsgrad as amsgrad
from optimizers.rules.adaptive.adam import scale_by_adam as scale_by_adam
from optimizers.rules.adaptive.adam import scale_by_adamax as scale_by_adamax
from optimizers.rules.adaptive.adam import scale_by_amsgrad as scale_by_amsgrad
from optimizers.rules.adaptive.adax import ScaleByAdaxState as ScaleByAdaxState
from optimizers.rules.adaptive.adax import adax as adax
from optimizers.rules.adaptive.adax import scale_by_adax as scale_by_adax
from optimizers.rules.adaptive.amos import ScaleByAmosState as ScaleByAmosState
from optimizers.rules.adaptive.amos import amos as amos
from optimizers.rules.adaptive.amos import scale_by_amos as scale_by_amos
from optimizers.wrappers.averaging import WeightEmaState as WeightEmaState
from optimizers.wrappers.averaging import SwaState as SwaState
from optimizers.wrappers.averaging import averaged_params as averaged_params
from optimizers.wrappers.averaging import weight_ema as weight_ema
from optimizers.wrappers.averaging import recompute_batch_stats as recompute_batch_stats
from optimizers.wrappers.sam import SAMState as SAMState
from optimizers.wrappers.sam import normalize as normalize
from optimizers.wrappers.sam import sam as sam
from optimizers.wrappers.averaging import swa as swa
from optimizers.rules.adaptive.belief import ScaleByBeliefState as ScaleByBeliefState
from optimizers.rules.adaptive.belief import adabelief as adabelief
from optimizers.rules.adaptive.belief import scale_by_belief as scale_by_belief
from optimizers.rules.lr_free.dadapt_adamw import ScaleByDadaptAdamwState as ScaleByDadaptAdamwState
from optimizers.rules.lr_free.dadapt_adamw import dadapt_adamw as dadapt_adamw
from optimizers.rules.lr_free.dadapt_adamw import scale_by_dadapt_adamw as scale_by_dadapt_adamw
from optimizers.rules.lr_free.dadapt_sgd import ScaleByDadaptSgdState as ScaleByDadaptSgdState
from optimizers.rules.lr_free.dadapt_adagrad import ScaleByDadaptAdagradState as ScaleByDadaptAdagradState
from optimizers.rules.lr_free.dadapt_adagrad import dadapt_adagrad as dadapt_adagrad
from optimizers.rules.lr_free.dadapt_sgd import dadapt_sgd as dadapt_sgd
from optimizers.rules.lr_free.dadapt_adagrad import scale_by_dadapt_adagrad as scale_by_dadapt_adagrad
from optimizers.rules.lr_free.dadapt_sgd import scale_by_dadapt_sgd as scale_by_dadapt_sgd
from optimizers.wrappers.data_echoing import data_echoing as data_echoing
from optimizers.contract.dtypes import with_state_dtype as with_state_dtype
from optimizers.rules.lr_free.dog import ScaleByDogState as ScaleByDogState
from optimizers.rules.lr_free.dog import dog as dog
from optimizers.rules.lr_free.dog import scale_by_dog as scale_by_dog
from optimizers.rules.lr_free.dog import ScaleByDowgState as ScaleByDowgState
from optimizers.rules.lr_free.dog import dowg as dowg
from optimizers.rules.lr_free.dog import scale_by_dowg as scale_by_dowg
from optimizers.rules.quasi_newton.lbfgs import ScaleByLbfgsState as ScaleByLbfgsState
from optimizers.rules.quasi_newton.lbfgs import lbfgs as lbfgs
from optimizers.rules.quasi_newton.lbfgs import scale_by_lbfgs as scale_by_lbfgs
from optimizers.rules.quasi_newton.torch_lbfgs import TorchLbfgsState as TorchLbfgsState
from optimizers.rules.quasi_newton.torch_lbfgs import torch_lbfgs as torch_lbfgs
from optimizers.rules.quasi_newton.linesearch import BacktrackingLinesearchInfo as BacktrackingLinesearchInfo
from optimizers.rules.quasi_newton.linesearch import ScaleByBacktrackingLinesearchState as ScaleByBacktrackingLinesearchState
from optimizers.rules.quasi_newton.linesearch import ScaleByZoomLinesearchState as ScaleByZoomLinesearchState
from optimizers.rules.quasi_newton.linesearch import ZoomLinesearchInfo as ZoomLinesearchInfo
from optimizers.rules.quasi_newton.linesearch import scale_by_backtracking_linesearch as scale_by_backtracking_linesearch
from optimizers.rules.quasi_newton.linesearch import scale_by_zoom_linesearch as scale_by_zoom_linesearch
from optimizers.rules.momentum.asgd import AsgdState as AsgdState
from optimizers.rules.momentum.asgd import asgd as asgd
from optimizers.rules.momentum.asgd import asgd_averaged_params as asgd_averaged_params
from optimizers.rules.momentum.ema import ScaleByEmaState as ScaleByEmaState
from optimizers.rules.momentum.ema import EmaState as EmaState
from optimizers.rules.momentum.ema import ema as ema
from optimizers.rules.momentum.ema import scale_by_ema as scale_by_ema
from optimizers.contract.backend import update_and_apply as update_and_apply
from optimizers.rules.momentum.funnelled_sgdm import ScaleByFunnelledSgdmState as ScaleByFunnelledSgdmState
from optimizers.rules.momentum.funnelled_sgdm import funnelled_sgdm as funnelled_sgdm
from optimizers.rules.momentum.funnelled_sgdm import scale_by_funnelled_sgdm as scale_by_funnelled_sgdm
from optimizers.estimators.gradient_free import GradientlessDescent as GradientlessDescent
from optimizers.estimators.gradient_free import GradientlessDescentState as GradientlessDescentState
from optimizers.estimators.gradient_free import forward_value_and_grad as forward_value_and_grad
from optimizers.estimators.gradient_free import gradientless_descent as gradientless_descent
from optimizers.estimators.gradient_free import zeroth_order_value_and_grad as zeroth_order_value_and_grad
from optimizers.contract.hyperparams import get_hyperparams as get_hyperparams
from optimizers.contract.hyperparams import set_hyperparams as set_hyperparams
from optimizers.contract.layers import layer_axes_from_flax as layer_axes_from_flax
from optimizers.contract.registry import register_nonnegative as register_nonnegative
from optimizers.rules.momentum.lion import ScaleByLionState as ScaleByLionState
from optimizers.rules.momentum.lion import lion as lion
from optimizers.rules.momentum.lion import scale_by_lion as scale_by_lion
from optimizers.wrappers.cautious import CautiousState as CautiousState
from optimizers.wrappers.cautious import cautious as cautious
from optimizers.wrappers.lookahead import LookaheadState as LookaheadState
from optimizers.wrappers.lookahead import lookahead as lookahead
from optimizers.wrappers.lookahead import slow_params as slow_params
from optimizers.rules.momentum.momentum import TraceState as TraceState
from optimizers.rules.momentum.momentum import sgd as sgd
from optimizers.rules.momentum.momentum import trace as trace
from optimizers.rules.matrix.muon import ScaleByMuonState as ScaleByMuonState
from optimizers.rules.matrix.muon import muon as muon
from optimizers.rules.matrix.normuon import normuon as normuon
from optimizers.rules.matrix.newton_schulz import orthogonalize as orthogonalize
from optimizers.rules.matrix.muon import scale_by_muon as scale_by_muon
from optimizers.rules.matrix.shampoo import ScaleByShampooState as ScaleByShampooState
from optimizers.rules.matrix.shampoo import scale_by_shampoo as scale_by_shampoo
from optimizers.rules.matrix.shampoo import shampoo as shampoo
from optimizers.rules.matrix.soap import ScaleBySoapState as ScaleBySoapState
from optimizers.rules.matrix.soap import SoapState as SoapState
from optimizers.rules.matrix.soap import scale_by_soap as scale_by_soap
from optimizers.rules.matrix.soap import soap as soap
from optimizers.rules.adaptive.nadam import ScaleByNadamState as ScaleByNadamState
from optimizers.rules.adaptive.nadam import nadam as nadam
from optimizers.rules.adaptive.nadam import nadamw as nadamw
from optimizers.rules.adaptive.nadam import scale_by_nadam as scale_by_nadam
from optimizers.wrappers.nonfinite import ApplyIfFiniteState as ApplyIfFiniteState
from optimizers.wrappers.nonfinite import apply_if_finite as apply_if_finite
from optimizers.wrappers.nonfinite import check_finite as check_finite
from optimizers.rules.layerwise.novograd import ScaleByNovogradState as ScaleByNovogradState
from optimizers.rules.layerwise.novograd import novograd as novograd
from optimizers.rules.layerwise.novograd import scale_by_novograd as scale_by_novograd
from optimizers.wrappers.plateau import ReduceOnPlateauState as ReduceOnPlateauState
from optimizers.wrappers.plateau import reduce_on_plateau as reduce_on_plateau
from optimizers.rules.lr_free.prodigy import ScaleByProdigyState as ScaleByProdigyState
from optimizers.rules.lr_free.prodigy import prodigy as prodigy
from optimizers.rules.lr_free.prodigy import scale_by_prodigy as scale_by_prodigy
from optimizers.wrappers.quantized.wrapper import QuantizedBuffer as QuantizedBuffer
from optimizers.wrappers.quantized.wrapper import dequantized as dequantized
from optimizers.wrappers.quantized.wrapper import with_quantized_state as with_quantized_state
from optimizers.rules.adaptive.radam import ScaleByRadamState as ScaleByRadamState
from optimizers.rules.adaptive.radam import radam as radam
from optimizers.rules.adaptive.radam import scale_by_radam as scale_by_radam
from optimizers.rules.adaptive.rmsprop import ScaleByRmsState as ScaleByRmsState
from optimizers.rules.adaptive.rmsprop import rmsprop as rmsprop
from optimizers.rules.adaptive.rmsprop import scale_by_rms as scale_by_rms
from optimizers.rules.momentum.rprop import ScaleByRpropState as ScaleByRpropState
from optimizers.rules.momentum.rprop import rprop as rprop
from optimizers.rules.momentum.rprop import scale_by_rprop as scale_by_rprop
from optimizers.rules.scaling import AddDecayedWeightsState as AddDecayedWeightsState
from optimizers.rules.scaling import ScaleByLearningRateState as ScaleByLearningRateState
from optimizers.rules.scaling import add_decayed_weights as add_decayed_weights
from optimizers.rules.scaling import scale_by_learning_rate as scale_by_learning_rate
from optimizers.rules.factored.sm3 import ScaleBySm3State as ScaleBySm3State
from optimizers.rules.factored.sm3 import scale_by_sm3 as scale_by_sm3
from optimizers.rules.factored.sm3 import sm3 as sm3
from optimizers.rules.layerwise.trust_ratio import ScaleByLarsState as ScaleByLarsState
from optimizers.rules.layerwise.trust_ratio import ScaleByTrustRatioState as ScaleByTrustRatioState
from optimizers.rules.layerwise.trust_ratio import lamb as lamb
from optimizers.rules.layerwise.trust_ratio import lars as lars
from optimizers.rules.layerwise.trust_ratio import scale_by_lars as scale_by_lars
from optimizers.rules.layerwise.trust_ratio import scale_by_trust_ratio as scale_by_trust_ratio
from optimizers.checkpoint import check_compatible as check_compatible
from optimizers.checkpoint import from_bytes as from_bytes
from optimizers.checkpoint import restore as restore
from optimizers.checkpoint import save as save
from optimizers.checkpoint import to_bytes as to_bytes
from optimizers.sharding import bytes_per_device as bytes_per_device
from optimizers.sharding import fit_sharding as fit_sharding
from optimizers.sharding import fsdp_shardings as fsdp_shardings
from optimizers.sharding import state_shardings as state_shardings
from optimizers.rules.adaptive.adopt import ScaleByAdoptState as ScaleByAdoptState
from optimizers.rules.adaptive.adopt import adopt as adopt
from optimizers.rules.adaptive.adopt import scale_by_adopt as scale_by_adopt
from optimizers.rules.adaptive.ademamix import ScaleByAdemamixState as ScaleByAdemamixState
from optimizers.rules.adaptive.ademamix import ScaleBySimplifiedAdemamixState as ScaleBySimplifiedAdemamixState
from optimizers.rules.adaptive.ademamix import ademamix as ademamix
from optimizers.rules.adaptive.ademamix import alpha_scheduler as alpha_scheduler
from optimizers.rules.adaptive.ademamix import beta3_scheduler as beta3_scheduler
from optimizers.rules.adaptive.ademamix import scale_by_ademamix as scale_by_ademamix
from optimizers.rules.adaptive.ademamix import scale_by_simplified_ademamix as scale_by_simplified_ademamix
from optimizers.rules.adaptive.ademamix import simplified_ademamix as simplified_ademamix
from optimizers.rules.adaptive.madgrad import MadgradState as MadgradState
from optimizers.rules.adaptive.madgrad import madgrad as madgrad
from optimizers.rules.adaptive.madgrad import scale_by_madgrad as scale_by_madgrad
from optimizers.rules.adaptive.acprop import ScaleByAcpropState as ScaleByAcpropState
from optimizers.rules.adaptive.acprop import acprop as acprop
from optimizers.rules.adaptive.acprop import scale_by_acprop as scale_by_acprop
from optimizers.rules.adaptive.yogi import ScaleByYogiState as ScaleByYogiState
from optimizers.rules.adaptive.yogi import scale_by_yogi as scale_by_yogi
from optimizers.rules.adaptive.yogi import yogi as yogi
from optimizers.rules.layerwise.fromage import FromageState as FromageState
from optimizers.rules.layerwise.fromage import fromage as fromage
from optimizers.rules.momentum.noise import AddNoiseState as AddNoiseState
from optimizers.rules.momentum.noise import add_noise as add_noise
from optimizers.rules.momentum.noise import noisy_sgd as noisy_sgd
from optimizers.rules.momentum.optimistic import ScaleByOptimisticGradientState as ScaleByOptimisticGradientState
from optimizers.rules.momentum.optimistic import optimistic_adam as optimistic_adam
from optimizers.rules.momentum.optimistic import optimistic_adam_v2 as optimistic_adam_v2
from optimizers.rules.momentum.optimistic import optimistic_gradient_descent as optimistic_gradient_descent
from optimizers.rules.momentum.optimistic import scale_by_optimistic_gradient as scale_by_optimistic_gradient
from optimizers.rules.lr_free.polyak import ScaleByPolyakState as ScaleByPolyakState
from optimizers.rules.lr_free.polyak import polyak_sgd as polyak_sgd
from optimizers.rules.lr_free.polyak import scale_by_polyak as scale_by_polyak
from optimizers.rules.adaptive.sophia import HutchinsonState as HutchinsonState
from optimizers.rules.adaptive.sophia import SophiaState as SophiaState
from optimizers.rules.adaptive.sophia import hutchinson_estimator_diag_hessian as hutchinson_estimator_diag_hessian
from optimizers.rules.adaptive.sophia import scale_by_sophia as scale_by_sophia
from optimizers.rules.adaptive.sophia import sophia as sophia
from optimizers.rules.momentum.sign import ScaleBySignumState as ScaleBySignumState
from optimizers.rules.momentum.sign import scale_by_sign as scale_by_sign
from optimizers.rules.momentum.sign import scale_by_signum as scale_by_signum
from optimizers.rules.momentum.sign import sign_sgd as sign_sgd
from optimizers.rules.momentum.sign import signum as signum
from optimizers.rules.adaptive.adan import ScaleByAdanState as ScaleByAdanState
from optimizers.rules.adaptive.adan import adan as adan
from optimizers.rules.adaptive.adan import scale_by_adan as scale_by_adan

__all__ = [
    "AddDecayedWeightsState",
    "AddNoiseState",
    "ApplyIfFiniteState",
    "AsgdState",
    "BacktrackingLinesearchInfo",
    "CautiousState",
    "ClipByBlockRmsState",
    "EmaState",
    "FromageState",
    "GradientlessDescent",
    "GradientlessDescentState",
    "HutchinsonState",
    "LookaheadState",
    "MadgradState",
    "QuantizedBuffer",
    "ReduceOnPlateauState",
    "SAMState",
    "ScaleByAcpropState",
    "ScaleByAdadeltaState",
    "ScaleByAdamState",
    "ScaleByAdamaxState",
    "ScaleByAdanState",
    "ScaleByAdaxState",
    "ScaleByAdemamixState",
    "ScaleByAdoptState",
    "ScaleByAmosState",
    "ScaleByAmsgradState",
    "ScaleByBacktrackingLinesearchState",
    "ScaleByBeliefState",
    "ScaleByDadaptAdagradState",
    "ScaleByDadaptAdamwState",
    "ScaleByDadaptSgdState",
    "ScaleByDogState",
    "ScaleByDowgState",
    "ScaleByEmaState",
    "ScaleByFactoredRmsState",
    "ScaleByFunnelledSgdmState",
    "ScaleByLarsState",
    "ScaleByLbfgsState",
    "ScaleByLearningRateState",
    "ScaleByLionState",
    "ScaleByMuonState",
    "ScaleByNadamState",
    "ScaleByNovogradState",
    "ScaleByOptimisticGradientState",
    "ScaleByParamBlockRmsState",
    "ScaleByPolyakState",
    "ScaleByProdigyState",
    "ScaleByRadamState",
    "ScaleByRelativeStepState",
    "ScaleByRmsState",
    "ScaleByRpropState",
    "ScaleByRssState",
    "ScaleByScheduleFreeAdamState",
    "ScaleByShampooState",
    "ScaleBySignumState",
    "ScaleBySimplifiedAdemamixState",
    "ScaleBySm3State",
    "ScaleBySoapState",
    "ScaleByTrustRatioState",
    "ScaleByYogiState",
    "ScaleByZoomLinesearchState",
    "ScheduleFreeState",
    "SoapState",
    "SophiaState",
    "SwaState",
    "TorchLbfgsState",
    "TraceState",
    "WeightEmaState",
    "ZoomLinesearchInfo",
    "acprop",
    "adabelief",
    "adadelta",
    "adafactor",
    "adagrad",
    "adam",
    "adamax",
    "adamaxw",
    "adamw",
    "adan",
    "adax",
    "add_decayed_weights",
    "add_noise",
    "ademamix",
    "adopt",
    "alpha_scheduler",
    "amos",
    "amsgrad",
    "apply_if_finite",
    "asgd",
    "asgd_averaged_params",
    "averaged_params",
    "beta3_scheduler",
    "bytes_per_device",
    "cautious",
    "check_compatible",
    "check_finite",
    "clip_by_block_rms",
    "dadapt_adagrad",
    "dadapt_adamw",
    "dadapt_sgd",
    "data_echoing",
    "dequantized",
    "dog",
    "dowg",
    "ema",
    "fit_sharding",
    "forward_value_and_grad",
    "from_bytes",
    "fromage",
    "fsdp_shardings",
    "funnelled_sgdm",
    "get_hyperparams",
    "gradientless_descent",
    "hutchinson_estimator_diag_hessian",
    "lamb",
    "lars",
    "layer_axes_from_flax",
    "lbfgs",
    "lion",
    "lookahead",
    "madgrad",
    "muon",
    "nadam",
    "nadamw",
    "noisy_sgd",
    "normalize",
    "normuon",
    "novograd",
    "optimistic_adam",
    "optimistic_adam_v2",
    "optimistic_gradient_descent",
    "orthogonalize",
    "polyak_sgd",
    "prodigy",
    "radam",
    "recompute_batch_stats",
    "reduce_on_plateau",
    "register_nonnegative",
    "restore",
    "rmsprop",
    "rprop",
    "sam",
    "save",
    "scale_by_acprop",
    "scale_by_adadelta",
    "scale_by_adam",
    "scale_by_adamax",
    "scale_by_adan",
    "scale_by_adax",
    "scale_by_ademamix",
    "scale_by_adopt",
    "scale_by_amos",
    "scale_by_amsgrad",
    "scale_by_backtracking_linesearch",
    "scale_by_belief",
    "scale_by_dadapt_adagrad",
    "scale_by_dadapt_adamw",
    "scale_by_dadapt_sgd",
    "scale_by_dog",
    "scale_by_dowg",
    "scale_by_ema",
    "scale_by_factored_rms",
    "scale_by_funnelled_sgdm",
    "scale_by_lars",
    "scale_by_lbfgs",
    "scale_by_learning_rate",
    "scale_by_lion",
    "scale_by_madgrad",
    "scale_by_muon",
    "scale_by_nadam",
    "scale_by_novograd",
    "scale_by_optimistic_gradient",
    "scale_by_param_block_rms",
    "scale_by_polyak",
    "scale_by_prodigy",
    "scale_by_radam",
    "scale_by_relative_step",
    "scale_by_rms",
    "scale_by_rprop",
    "scale_by_rss",
    "scale_by_schedule_free_adam",
    "scale_by_shampoo",
    "scale_by_sign",
    "scale_by_signum",
    "scale_by_simplified_ademamix",
    "scale_by_sm3",
    "scale_by_soap",
    "scale_by_sophia",
    "scale_by_trust_ratio",
    "scale_by_yogi",
    "scale_by_zoom_linesearch",
    "schedule_free",
    "schedule_free_adamw",
    "schedule_free_eval_params",
    "schedule_free_sgd",
    "set_hyperparams",
    "sgd",
    "shampoo",
    "sign_sgd",
    "signum",
    "simplified_ademamix",
    "slow_params",
    "sm3",
    "soap",
    "sophia",
    "state_shardings",
    "swa",
    "to_bytes",
    "torch_lbfgs",
    "trace",
    "update_and_apply",
    "weight_ema",
    "with_quantized_state",
    "with_state_dtype",
    "yogi",
    "zeroth_order_value_and_grad",
]
