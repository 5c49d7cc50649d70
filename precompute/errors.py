"""Errors a user can act on. The CLI prints them as one line; the API turns them into 4xx."""


class MicroscopeError(Exception):
    """Base for every error caused by the user's input rather than by a bug."""


class UnknownArchitectureError(MicroscopeError):
    pass


class UnknownLayerError(MicroscopeError):
    pass


class CheckpointError(MicroscopeError):
    pass
