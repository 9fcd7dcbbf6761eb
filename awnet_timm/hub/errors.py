""" The error of the Hub release tools: a release that cannot be exported, described or published as asked """

__all__ = ['HubReleaseError']


class HubReleaseError(ValueError):
    """An export, model card or publish request that cannot be carried out, with what to do instead."""
