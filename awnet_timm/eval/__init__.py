from .filters import conv_layers, filter_means, plot_filter_means, summarize
from .harness import SANITY_EPS, detection_auc, evaluate_robustness, sanity_checks
from .report import build_record, markdown_table, plot_eps_curve, plot_tradeoff, write_report
from .suite import GROUPS, AttackSpec, build_suite
