""" The error of the Hub release tools (a release that cannot be exported, described, published or served as
asked), and the repo id check all of them make """
from huggingface_hub.errors import HFValidationError
from huggingface_hub.utils import validate_repo_id

__all__ = ['HubReleaseError', 'check_repo_id']


class HubReleaseError(ValueError):
    """An export, model card, publish or mirror request that cannot be carried out, with what to do instead."""


def check_repo_id(repo_id: str, what: str = 'repo id') -> str:
    """`repo_id` if it is a Hub model repo id 'organization/name' (huggingface_hub's rules); HubReleaseError otherwise."""
    try:
        validate_repo_id(repo_id)
    except HFValidationError as e:
        raise HubReleaseError(f"invalid {what} '{repo_id}': {e}") from None
    if repo_id.count('/') != 1:
        raise HubReleaseError(f"{what} must be 'organization/name', got '{repo_id}'")
    return repo_id
