"""`awnet zoo`: budgeted plans that train teachers and students, evaluate and export them, and pack the results."""
from .pack import PackError, pack_run, unpack_parts
from .plan import Plan, Stage, ZooError, load_plan, list_plans
from .runner import ZooResult, run_zoo

__all__ = ['Plan', 'Stage', 'ZooError', 'load_plan', 'list_plans', 'run_zoo', 'ZooResult', 'pack_run', 'unpack_parts',
           'PackError']
