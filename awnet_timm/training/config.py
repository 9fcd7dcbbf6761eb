""" The run configuration: one dataclass whose defaults are the paper's, every field overridable

`TrainConfig` drives `train()`, `awnet train` and `awnet finetune` (the CLI builds its options from the
fields and their help texts). It is printed into every run's log and saved next to every checkpoint.
AW-Net paper (Sec. 5.1) and MTARD: SGD momentum 0.9, weight decay 2e-4, lr 0.1 for the classifier and
0.01 for the router, batch 256, 100 epochs, lr /10 at epochs 75 and 90, eps 8/255, beta 3, tau 1
(CIFAR-100: 5), PGD-10 with step 2/255 to make the training examples.
"""
import dataclasses
import difflib
import json
from dataclasses import dataclass, field
from typing import Any, Dict, Optional, Tuple

import timm
import torch

from ..data import DATASETS, held_out_split
from ..models import AWNet
from ..utils import native_bf16

__all__ = ['TrainConfig', 'RECIPES', 'ConfigError']

RECIPES = ('mtard', 'pgd_at', 'trades', 'standard', 'arat')
_PRECISIONS = ('auto', 'fast', 'fp32', 'bf16')
_ATTACK_STARTS = ('uniform', 'normal', 'none')
ATTACK_BN_MODES = ('eval', 'train')
ATTACK_ROUTES = ('adv', 'auto', 'clean', 'mixed')
KL_REDUCTIONS = ('mean', 'batchmean')
TRAINING_ATTACKS = ('pgd', 'nfgsm')
SCHEDULES = ('multistep', 'cosine', 'linear', 'onecycle')


class ConfigError(ValueError):
    """A configuration value that cannot work, with what was expected."""


def _f(default, help: str, **kwargs):
    if isinstance(default, (dict, list)):
        return field(default_factory=lambda: type(default)(default), metadata={'help': help, **kwargs})
    return field(default=default, metadata={'help': help, **kwargs})


def _check_model_name(option: str, name: str):
    """A registered timm architecture (bare or name.tag); hf-hub: and local-dir: names are checked when loaded."""
    if not name or name.startswith(('hf-hub:', 'local-dir:')):
        return
    if not timm.is_model(name.split('.')[0]):
        close = difflib.get_close_matches(name.split('.')[0], timm.list_models(), n=3)
        raise ConfigError(f"unknown {option} '{name}': not a timm model"
                          + (f" (did you mean {', '.join(close)}?)" if close else '')
                          + ' (`import awnet_timm` registers awnet_r18/r34, cifar_resnet18/34/56, cifar_wrn34_10/28_10)')


def _is_awnet_family(name: str) -> bool:
    """A registered awnet_* / cifar_resnet* architecture (an AWNet); hf-hub: and local-dir: names count (checked when built)."""
    if name.startswith(('hf-hub:', 'local-dir:')):
        return True
    arch = name.split('.')[0]
    return timm.is_model(arch) and timm.models.model_entrypoint(arch).__module__ == AWNet.__module__


@dataclass
class TrainConfig:
    """Everything a training or fine-tuning run needs; defaults reproduce the paper's CIFAR-10 setting."""
    # model
    model: str = _f('awnet_r18', 'timm model name (import awnet_timm registers awnet_r18/r34, cifar_resnet18/34/56, cifar_wrn34_10)')
    model_kwargs: Dict[str, Any] = _f({}, 'extra model constructor arguments, as JSON (e.g. {"modulate": false})')
    pretrained: str = _f('', 'initial weights: a .safetensors file, a run directory, a timm name.tag or hf-hub:org/repo '
                             '(the classifier is replaced when the class count differs)')
    num_classes: Optional[int] = _f(None, 'classes of the model (default: those of the dataset)')
    head: str = _f('', "classifier head of awnet_*/cifar_resnet* models: 'fc' or 'hpm' (the HPM l2-reclassifier, "
                       "layers/hpm_head.py; FC weights load into it) (default: the model's, fc; model_kwargs head wins)")
    beta: float = _f(3.0, "AW-Net's signal exponent beta (Eq. 19), for awnet_* models (model_kwargs beta wins)")
    # data
    dataset: str = _f('cifar10-offline', "'cifar10', 'cifar100' (torchvision), 'cifar10-offline' (the npz copy) or 'imagefolder'")
    data_dir: str = _f('', 'dataset root (for imagefolder: the folder holding train/ and val/)')
    download: bool = _f(False, 'let torchvision download CIFAR into --data-dir')
    train_split: str = _f('train', 'split to train on')
    val_split: str = _f('', "split of the held-out set ('holdout': the last --val-size training images, kept out of "
                            "training; the default for every dataset, so the split `awnet eval` reports on never picks the best "
                            "checkpoint) or a split of the dataset ('test', 'val')")
    val_size: int = _f(1000, 'images in the held-out set (0: no per-epoch evaluation)')
    train_size: Optional[int] = _f(None, 'train on the first N images only (default: all)')
    img_size: Optional[int] = _f(None, 'resize images to this size (default: as stored)')
    crop_pad: int = _f(4, 'zero padding of the random crop (0: no crop)')
    hflip: bool = _f(True, 'random horizontal flips')
    data_on_device: bool = _f(True, 'keep the whole dataset on the device as uint8 (False: in host memory)')
    # recipe
    recipe: str = _f('mtard', f"training recipe: {', '.join(RECIPES)}")
    epochs: int = _f(100, 'epochs')
    batch_size: int = _f(256, 'global batch size (split across DDP ranks)')
    lr: float = _f(0.1, 'learning rate of the classifier')
    router_lr: float = _f(0.01, "learning rate of AW-Net's router")
    momentum: float = _f(0.9, 'SGD momentum')
    weight_decay: float = _f(2e-4, 'weight decay (all parameters, as the paper and MTARD apply it)')
    decay_milestones: Tuple[int, ...] = _f((75, 90), 'epochs (1-based) from which the lr is divided by --decay-rate')
    decay_rate: float = _f(0.1, 'lr factor at each milestone')
    warmup_epochs: int = _f(0, 'linear lr warm-up epochs, from lr/100 up to --lr, before the schedule and part of --epochs '
                               '(the decay of cosine and linear runs over the epochs after it; multistep milestones stay '
                               'absolute epochs and must come after it; onecycle has its own warm-up)')
    sched: str = _f('multistep', "lr schedule: 'multistep' (the paper's: --decay-milestones, per epoch), 'cosine' or "
                                 "'linear' (to zero), or 'onecycle' (linear up to --lr over --onecycle-peak of the steps, "
                                 "then linear to zero); all but multistep set the lr at every step")
    onecycle_peak: float = _f(0.25, "fraction of the training steps over which 'onecycle' rises to --lr")
    label_smoothing: float = _f(0.0, 'label smoothing of the cross-entropy terms: standard, pgd_at, trades (its clean CE; '
                                     'the KL term and the attack are unchanged) and arat (both CE terms); mtard has no '
                                     'cross-entropy to smooth (KL to the teachers) and refuses it')
    eps: float = _f(8 / 255, 'L-inf radius of the training attack, in pixel units')
    attack_step: float = _f(2 / 255, 'step size of the training attack')
    attack_steps: int = _f(10, 'PGD steps of the training attack')
    attack_start: str = _f('', "PGD start: 'uniform', 'normal' (0.001 N(0,1)) or 'none' (default: 'uniform' for "
                               "pgd_at and arat, 'normal' for mtard and trades, as their papers' code does)")
    attack: str = _f('pgd', "training attack: 'pgd' (PGD-k: --attack-steps k steps of --attack-step; the zoo's plans "
                            "use 2.5 eps / k) or 'nfgsm' (N-FGSM, de Jorge et al. 2022: one step of --nfgsm-step from "
                            "x + U(-k eps, k eps), k = --nfgsm-noise, not projected back onto the eps-ball)")
    nfgsm_noise: float = _f(2.0, "N-FGSM's noise half-width k, in multiples of eps (the paper's 2)")
    nfgsm_step: Optional[float] = _f(None, "N-FGSM's step alpha (default: eps, the paper's)")
    attack_bn: str = _f('eval', "model mode while the training attack runs: 'eval' (BN running statistics, as the MTARD "
                                "and TRADES code attack) or 'train' (BN batch statistics, and the attack's passes move the "
                                "running statistics too, as de Jorge et al.'s N-FGSM code attacks); measured in docs/design.md")
    attack_route: str = _f('adv', "AW-Net route while the training attack runs: 'adv' (forced Adv BN, the branch "
                                  "x_adv trains), 'auto' (the router decides), 'clean' (forced Clean BN) or 'mixed' (half "
                                  "of each batch attacked in 'adv', half in 'clean', all labelled adversarial: the "
                                  "router also learns the examples that target the Clean BN; docs/design.md)")
    router_aware: float = _f(0.0, "router-aware adversarial training (not in the paper; AW-Net students of mtard and "
                                  "pgd_at): this share of each batch is also attacked by RouterAwarePGD (the classifier "
                                  "with the router's outputs held constant, plus a random-weight push of P(clean) up, at a "
                                  "random eps scale), labelled adversarial for the type loss and trained through the route "
                                  "the router takes; 0: the paper's training (docs/adaptive_attacks.md)")
    tau: float = _f(1.0, "MTARD's student temperature (1 for CIFAR-10, 5 for CIFAR-100)")
    kl_reduction: str = _f('mean', "MTARD's distillation KL: 'mean' (MTARD's code: averaged over batch x classes, a "
                                   "1/classes scale of the per-sample KL) or 'batchmean' (summed over classes, averaged "
                                   "over the batch: the per-sample KL; the zoo's CPU plan, measured in docs/design.md)")
    eta: float = _f(0.025, "MTARD's adaptive teacher-weight step (decays with the lr)")
    type_loss_weight: float = _f(1.0, "weight of the router's type loss")
    trades_beta: float = _f(6.0, "TRADES's robust-term weight (1/lambda)")
    arat_gamma: float = _f(30.0, "ARAT's invariance-loss weight gamma (30 for ResNet-18, 100 for WRN-34-10 in the paper)")
    arat_predictor_ratio: float = _f(0.25, "width of ARAT's predictor bottleneck relative to the aligned features (1/4)")
    arat_auto_balance: bool = _f(True, "ARAT's CE weights: acc and 1 - acc for the adversarial and clean branch, acc = "
                                       "last epoch's clean training accuracy (False: both 1)")
    teacher_nat: str = _f('', 'clean teacher for mtard: a timm model name, name.tag or hf-hub:org/repo')
    teacher_nat_checkpoint: str = _f('', 'weights of the clean teacher (.safetensors file or run directory)')
    teacher_adv: str = _f('', 'robust teacher for mtard: a timm model name, name.tag or hf-hub:org/repo')
    teacher_adv_checkpoint: str = _f('', 'weights of the robust teacher (.safetensors file or run directory)')
    # fine-tuning
    freeze_router: bool = _f(False, "keep AW-Net's router fixed (type head and signal heads)")
    freeze_backbone: bool = _f(False, 'train only the classifier head (and the router unless frozen)')
    # speed
    device: str = _f('auto', "'auto' (cuda when present), 'cpu', 'cuda', 'cuda:1', ...")
    precision: str = _f('auto', "'auto' (bf16 autocast on CUDA, fp32 on CPU), 'fast' (bf16 autocast where the device "
                                "computes bf16 natively: CUDA, or a CPU with AMX-BF16; fp32 elsewhere), 'fp32' or "
                                "'bf16'")
    channels_last: bool = _f(False, 'channels_last memory format')
    compile: bool = _f(False, 'torch.compile the model')
    # run
    output: str = _f('output', 'parent folder of run directories')
    run_name: str = _f('', 'run directory name (default: <model>-<recipe>-<time>)')
    resume: str = _f('', "run directory (or its last.safetensors) to continue; 'auto': this run's own if present")
    max_minutes: Optional[float] = _f(None, 'stop cleanly at the first epoch boundary past this budget (resume later); '
                                            '0 or none: no limit (clears a limit inherited on --resume)')
    seed: int = _f(0, 'seed of initialisation, data order, augmentation and attacks')
    val_attack_steps: int = _f(10, 'PGD steps of the per-epoch robust evaluation (CE, uniform start)')
    val_attack_step: float = _f(0.0, 'step of the per-epoch PGD; 0: 2.5 eps / val_attack_steps (2/255 for PGD-10 at 8/255), '
                                     "whatever the training attack's step")
    log_interval: int = _f(50, 'steps between log lines')
    progress: bool = _f(True, 'tqdm progress bars')

    def __post_init__(self):
        if not self.val_split:  # the dataset's held-out split, fixed at construction (saved configs name it)
            self.val_split = held_out_split(self.dataset)

    def validate(self) -> 'TrainConfig':
        """Raise ConfigError on a value that cannot work, saying what was expected."""
        if self.recipe not in RECIPES:
            raise ConfigError(f"unknown recipe '{self.recipe}': expected one of {', '.join(RECIPES)}")
        if self.precision not in _PRECISIONS:
            raise ConfigError(f"unknown precision '{self.precision}': expected one of {', '.join(_PRECISIONS)}")
        if self.attack_start and self.attack_start not in _ATTACK_STARTS:
            raise ConfigError(f"unknown attack_start '{self.attack_start}': expected one of {', '.join(_ATTACK_STARTS)}")
        if self.attack_bn not in ATTACK_BN_MODES:
            raise ConfigError(f"unknown attack_bn '{self.attack_bn}': expected one of {', '.join(ATTACK_BN_MODES)}")
        if self.kl_reduction not in KL_REDUCTIONS:
            raise ConfigError(f"unknown kl_reduction '{self.kl_reduction}': expected one of {', '.join(KL_REDUCTIONS)}")
        if self.attack_route not in ATTACK_ROUTES:
            raise ConfigError(f"attack_route must be one of {', '.join(ATTACK_ROUTES)}, got '{self.attack_route}'")
        for name in ('epochs', 'batch_size', 'attack_steps', 'val_attack_steps', 'log_interval'):
            if getattr(self, name) < 1:
                raise ConfigError(f'{name} must be >= 1, got {getattr(self, name)}')
        for name in ('lr', 'router_lr', 'momentum', 'weight_decay', 'decay_rate', 'attack_step', 'tau', 'eta',
                     'type_loss_weight', 'trades_beta', 'val_size', 'crop_pad', 'warmup_epochs', 'arat_gamma', 'val_attack_step'):
            if getattr(self, name) < 0:
                raise ConfigError(f'{name} must be >= 0, got {getattr(self, name)}')
        if not 0 <= self.router_aware <= 1:
            raise ConfigError(f'router_aware is a share of each batch, in [0, 1] (0: the paper\'s training), got {self.router_aware}')
        if self.router_aware and self.recipe not in ('mtard', 'pgd_at'):
            raise ConfigError(f"router_aware trains AW-Net students of recipes mtard and pgd_at, not '{self.recipe}'")
        if not 0 <= self.eps <= 1:
            raise ConfigError(f'eps is in pixel units and must be in [0, 1] (8/255 = {8 / 255:.4f}), got {self.eps}')
        if self.eps > 0.5 or self.attack_step > 0.5 or self.val_attack_step > 0.5:
            raise ConfigError(f'eps={self.eps} / attack_step={self.attack_step} look like 0-255 units: give pixel units (8/255)')
        if list(self.decay_milestones) != sorted(self.decay_milestones):
            raise ConfigError(f'decay_milestones must be increasing, got {self.decay_milestones}')
        if self.head not in ('', 'fc', 'hpm'):
            raise ConfigError(f"unknown head '{self.head}': expected 'fc' or 'hpm'")
        if not 0 < self.arat_predictor_ratio <= 1:
            raise ConfigError(f'arat_predictor_ratio must be in (0, 1], got {self.arat_predictor_ratio}')
        if self.recipe == 'mtard' and not (self.teacher_nat and self.teacher_adv):
            raise ConfigError('recipe mtard needs both teachers: --teacher-nat and --teacher-adv '
                              '(a timm model name with --teacher-*-checkpoint, or a Hub id)')
        if self.max_minutes is not None and self.max_minutes < 0:
            raise ConfigError(f'max_minutes must be > 0 (or 0 / none: no limit), got {self.max_minutes}')
        for name, unset in (('num_classes', "the dataset's"), ('train_size', 'all images'), ('img_size', 'as stored')):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ConfigError(f'{name} must be >= 1 (or none: {unset}), got {getattr(self, name)}')
        if self.train_size is not None and self.train_size < self.batch_size:
            raise ConfigError(f'train_size {self.train_size} is less than one batch (batch_size {self.batch_size}): '
                              f'raise --train-size or lower --batch-size')
        if self.dataset not in DATASETS:
            raise ConfigError(f"unknown dataset '{self.dataset}': expected one of {', '.join(DATASETS)}")
        if not self.data_dir:
            raise ConfigError(f"dataset '{self.dataset}' needs its root directory: pass --data-dir "
                              f"(e.g. ../shared/data/cifar10 for cifar10-offline, the folder holding train/ and val/ for imagefolder)")
        for name in ('model', 'teacher_nat', 'teacher_adv'):
            _check_model_name(name, getattr(self, name))
        if self.head and not _is_awnet_family(self.model):
            raise ConfigError(f"head '{self.head}' is a classifier option of the awnet_* / cifar_resnet* models; "
                              f"'{self.model}' has its own classifier: drop --head")
        if self.attack not in TRAINING_ATTACKS:
            raise ConfigError(f"unknown attack '{self.attack}': expected one of {', '.join(TRAINING_ATTACKS)}")
        if self.sched not in SCHEDULES:
            raise ConfigError(f"unknown sched '{self.sched}': expected one of {', '.join(SCHEDULES)}")
        if not 0 < self.onecycle_peak < 1:
            raise ConfigError(f'onecycle_peak is a fraction of the steps in (0, 1), got {self.onecycle_peak}')
        if not 0 <= self.label_smoothing < 1:
            raise ConfigError(f'label_smoothing must be in [0, 1), got {self.label_smoothing}')
        if self.label_smoothing and self.recipe == 'mtard':
            raise ConfigError(f'label_smoothing {self.label_smoothing} has nothing to act on in recipe mtard: its loss is '
                              f'KL to the teachers\' soft labels, with no cross-entropy on the labels: set it to 0')
        if self.warmup_epochs and self.warmup_epochs >= self.epochs:
            raise ConfigError(f'warmup_epochs {self.warmup_epochs} leaves no epoch of the schedule out of {self.epochs}')
        if self.warmup_epochs and self.sched == 'onecycle':
            raise ConfigError(f"sched 'onecycle' rises over its own warm-up (--onecycle-peak {self.onecycle_peak} of the "
                              f"steps): give warmup_epochs 0 with it, not {self.warmup_epochs}")
        if self.warmup_epochs and self.sched == 'multistep' and any(m <= self.warmup_epochs + 1 for m in self.decay_milestones):
            raise ConfigError(f'decay_milestones {tuple(self.decay_milestones)} decay the lr by epoch {self.warmup_epochs + 1}, '
                              f'the first after the {self.warmup_epochs}-epoch warm-up, so the lr never reaches --lr: '
                              f'give milestones from epoch {self.warmup_epochs + 2} on (they are absolute epochs)')
        if self.nfgsm_noise < 0 or (self.nfgsm_step is not None and not 0 < self.nfgsm_step <= 0.5):
            raise ConfigError(f'nfgsm_noise must be >= 0 and nfgsm_step in (0, 0.5] (pixel units), got '
                              f'{self.nfgsm_noise} and {self.nfgsm_step}')
        return self

    def autocast(self, device: torch.device) -> bool:
        """Whether training on `device` runs under bf16 autocast: 'bf16', 'auto' on CUDA, 'fast' where bf16 is native."""
        return self.precision == 'bf16' or (self.precision == 'auto' and device.type == 'cuda') or \
            (self.precision == 'fast' and native_bf16(device))

    def val_step(self) -> float:
        """The per-epoch PGD's step: val_attack_step, or 2.5 eps / val_attack_steps."""
        return self.val_attack_step or 2.5 * self.eps / self.val_attack_steps

    def model_args(self) -> Dict[str, Any]:
        """Constructor arguments of the model: model_kwargs, plus beta for AW-Net models."""
        args = dict(self.model_kwargs)
        if self.model.split(':')[-1].startswith('awnet_'):
            args.setdefault('beta', self.beta)
        if self.head:
            args.setdefault('head', self.head)
        return args

    @property
    def resolved_attack_start(self) -> str:
        return self.attack_start or ('uniform' if self.recipe in ('pgd_at', 'arat') else 'normal')

    def to_dict(self) -> Dict[str, Any]:
        d = dataclasses.asdict(self)
        d['decay_milestones'] = list(self.decay_milestones)
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> 'TrainConfig':
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ConfigError(f'unknown config keys {unknown}: expected keys of TrainConfig ({", ".join(sorted(names))})')
        d = dict(d)
        if 'decay_milestones' in d:
            d['decay_milestones'] = tuple(d['decay_milestones'])
        return cls(**d)
