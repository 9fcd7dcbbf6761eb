from .checkpoint import CheckpointError, create_model_with_weights, load_weights_file, save_weights
from .config import RECIPES, ConfigError, TrainConfig
from .mtard_loss import AdaptiveTeacherWeights, distill_kl, type_loss
from .recipes import Recipe, TrainForward, create_recipe, train_step
from .teachers import load_teacher
from .trainer import TrainResult, create_train_optimizer, evaluate, fixed_batch_step, load_run_config, train
