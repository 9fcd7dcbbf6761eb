from .filters import conv_layer_name, conv_layers, filter_means, plot_filter_means, summarize
from .harness import SANITY_EPS, SANITY_N, EvaluationError, detection_auc, evaluate_robustness, sanity_checks
from .report import build_record, label_offsets, load_record, markdown_table, plot_eps_curve, plot_tradeoff, write_report
from .suite import ATTACK_NAMES, GROUPS, PROTOCOL_EPS, AttackSpec, build_suite, validate_suite_args
