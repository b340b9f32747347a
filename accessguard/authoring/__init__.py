"""Tools for the security team: policy cases, lint, learn, schema pull."""


def __getattr__(name: str) -> object:  # the 0.1 module's names, deprecated (accessguard.moved)
    from accessguard.moved import moved_name

    return moved_name(__name__, name)
