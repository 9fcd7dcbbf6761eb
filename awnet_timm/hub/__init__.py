"""Hub I/O: export a training run as a Hub repo folder, write its model card, publish it, serve release folders."""
from .card import CardInfo, check_eval_record, load_eval_record, model_card, zoo_row
from .errors import HubReleaseError
from .export import ExportResult, export_checkpoint
from .mirror import HubMirror, release_repos
from .publish import PublishResult, check_release_folder, publish_folder

__all__ = [
    'CardInfo', 'check_eval_record', 'load_eval_record', 'model_card', 'zoo_row', 'HubReleaseError', 'ExportResult',
    'export_checkpoint', 'HubMirror', 'release_repos', 'PublishResult', 'check_release_folder', 'publish_folder',
]
